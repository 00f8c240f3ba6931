"""The local workspace: the same folder layout a Transformer Lab host keeps in its own workspace.

<workspace>/jobs/<job_id>/index.json        job record (status, progress, job_data)
<workspace>/jobs/<job_id>/output_<job_id>.txt  the job log
<workspace>/temp/plugin_input_<job_id>.json parameters handed to a trainer
<workspace>/experiments/<exp>/tensorboards/<template>/   trainer output_dir (TensorBoard, metrics.json)
<workspace>/experiments/<exp>/evals/<eval>/<job_id>/     evaluator outputs
<workspace>/adaptors/<model>/<adaptor_name>/             LoRA adapters
<workspace>/models/<name>/                               full models (index.json + _tlab_provenance.json)
<workspace>/datasets/<id>/                               datasets (index.json + files)
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from plugin_sdk.errors import ParameterError, PluginError
from plugin_sdk.safe_files import make_dirs

WORKSPACE_ENV = "DLM_WORKSPACE"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


def default_workspace() -> Path:
    """`$DLM_WORKSPACE`, else `./workspace` in the current folder."""
    return Path(os.environ.get(WORKSPACE_ENV) or Path.cwd() / "workspace").expanduser().resolve()


# a path component holds 255 bytes; saving adds suffixes (".partial-xxxxxxxx", "-v12", "_2")
MAX_NAME_BYTES = 200


def safe_name(name: str, *, field: str) -> str:
    """A name that becomes one path component: `/` becomes `_` (as the host does for model ids); anything that
    could leave its folder (`..`, absolute paths, empty names) is refused."""
    cleaned = _UNSAFE.sub("_", str(name).strip().replace("/", "_"))
    if not cleaned or set(cleaned) <= {".", "_"}:
        raise PluginError(f"{field}={name!r} cannot be used as a folder name; use letters, digits, '.', '_' or '-'.")
    return check_name_length(cleaned, field=field)


def check_name_length(name: str, *, field: str) -> str:
    """`name`, refused when too long to be a folder name once saving adds its suffixes (a file system holds 255
    bytes per name), now rather than when the result is saved."""
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_NAME_BYTES:
        raise PluginError(
            f"{field} is {size} bytes long ({name[:40]!r}...): a name that becomes a folder holds at most "
            f"{MAX_NAME_BYTES} bytes; choose a shorter one"
        )
    return name


def child_path(parent: Path, name: str, *, field: str) -> Path:
    """`parent/name` with `name` made safe, guaranteed to stay inside `parent`."""
    path = parent / safe_name(name, field=field)
    if parent.resolve() not in path.resolve().parents:
        raise PluginError(f"{field}={name!r} would leave {parent}.")
    return path  # as named, not resolved: a link on the way stays visible to `plugin_sdk.safe_files`


def check_job_id(job_id: str) -> str:
    """A job id is a plain name (letters, digits, '_' and '-', at most 100): it names folders and files, so anything
    else (`../../x`, `a/b`, `.`) is refused rather than rewritten."""
    if not _PLAIN_ID.fullmatch(str(job_id)):
        raise ParameterError(
            f"job_id={job_id!r} is not a plain name: use letters, digits, '_' and '-' (starting with a letter or digit)"
        )
    return str(job_id)


class Workspace:
    """Paths of one local workspace; creates folders on demand and checks that it is writable."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        if root is not None and not str(root).strip():
            raise PluginError(
                f"the workspace {str(root)!r} names no folder: give a folder, or leave the workspace out for "
                f"${WORKSPACE_ENV} or ./workspace"
            )
        self.root = Path(root).expanduser().resolve() if root else default_workspace()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-test-", delete=True)
            probe.close()
        except OSError as exc:
            raise PluginError(
                f"The workspace {self.root} is not writable ({exc.strerror or exc}). Choose another with --workspace "
                f"or the {WORKSPACE_ENV} environment variable."
            ) from exc

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / check_job_id(job_id)

    def input_file(self, job_id: str) -> Path:
        return self.root / "temp" / f"plugin_input_{check_job_id(job_id)}.json"

    def experiment_dir(self, experiment: str) -> Path:
        return child_path(self.root / "experiments", experiment, field="experiment_name")

    def trainer_output_dir(self, experiment: str, template_name: str) -> Path:
        return child_path(self.experiment_dir(experiment) / "tensorboards", template_name, field="template_name")

    def eval_output_dir(self, experiment: str, eval_name: str, job_id: str) -> Path:
        evals = child_path(self.experiment_dir(experiment) / "evals", eval_name, field="eval_name")
        return evals / check_job_id(job_id)

    def adaptor_dir(self, model_name: str, adaptor_name: str) -> Path:
        model = child_path(self.root / "adaptors", model_name, field="model_name")
        return child_path(model, adaptor_name, field="adaptor_name")

    def model_dir(self, name: str) -> Path:
        return child_path(self.root / "models", name, field="model name")

    def dataset_dir(self, dataset_id: str) -> Path:
        return child_path(self.root / "datasets", dataset_id, field="dataset_name")

    def next_job_id(self) -> str:
        """The next free numeric job id (the host numbers jobs too)."""
        jobs = make_dirs(self.root / "jobs", self.root)
        taken = [int(p.name) for p in jobs.iterdir() if p.name.isdigit()]
        job_id = max(taken, default=0) + 1
        while True:
            try:
                (jobs / str(job_id)).mkdir()
                return str(job_id)
            except FileExistsError:
                job_id += 1
