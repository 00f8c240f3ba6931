"""The host's import paths for our tasks, run with the transformerlab-app's own code (TLAB_APP_DIR, see tlab_app):
a task created from a Git URL and directory (the app's clone script, run by bash against a Git repository of ours),
from an uploaded folder (the app's task service unzipping and copying it into a `lab` workspace), and from our team
gallery file (the app's team-gallery import); then the task's `setup` and `run` lines as the job runs them.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from werkzeug.utils import secure_filename

from tests.integration import tlab_app

REPO = Path(__file__).resolve().parents[2]
PLUGIN_IDS = ("diffusion_llm_trainer", "diffusion_dpo_trainer", "diffusion_grpo_trainer", "diffusion_evaluator")
SWEEP_IDS = ("diffusion_llm_trainer", "diffusion_dpo_trainer")  # trainers with a sweep task, plugins/<id>/sweep
SWEEP_KEYS = ("run_sweeps", "sweep_config", "sweep_metric", "lower_is_better")
GALLERY = REPO / "gallery" / "team-gallery.json"
SETUP_MESSAGE = "set DLM_SOURCE to this project: a checkout folder or a git+https:// URL"
EXPERIMENT = "exp"


def task_yaml_text(plugin_id: str) -> str:
    return (REPO / "plugins" / plugin_id / "task.yaml").read_text(encoding="utf-8")


@pytest.fixture
def app(monkeypatch, tmp_path) -> types.SimpleNamespace:
    """The app's task.yaml parsing, team gallery (the workspace's team_specific_tasks.json), team-gallery import and
    task service, on a fresh `lab` workspace; GitHub's API (fetching a task.yaml) reads this checkout instead."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    monkeypatch.setenv("TFL_WORKSPACE_DIR", str(workspace))
    monkeypatch.setitem(sys.modules, "fastapi", tlab_app.fastapi_stub())
    schema = tlab_app.load_module(tlab_app.SCHEMA, "tlab_task_schema")
    service = tlab_app.load_module(tlab_app.TASK_SERVICE, "tlab_task_service").TaskService()
    fetched = []

    async def fetch_task_yaml_from_github(repo_url: str, directory: str | None = None, ref: str | None = None) -> str:
        fetched.append((repo_url, directory, ref))
        path = REPO / (directory or "") / "task.yaml"
        if not path.is_file():
            raise tlab_app.HTTPException(404, "task.yaml not found")
        return path.read_text(encoding="utf-8")

    async def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    file_name = tlab_app.constant(tlab_app.GALLERIES, "TEAM_TASKS_GALLERY_FILE")
    team_gallery = workspace / file_name
    galleries = tlab_app.functions(
        tlab_app.GALLERIES, ["get_team_tasks_gallery"], {"json": json, "TEAM_TASKS_GALLERY_FILE": file_name}
    )

    namespace = {
        "yaml": yaml,
        "json": json,
        "os": os,
        "Optional": Any,
        "TaskYamlSpec": schema.TaskYamlSpec,
        "ImportTaskFromTeamGalleryRequest": schema.ImportTaskFromTeamGalleryRequest,
        "ValidationError": ValidationError,
        "HTTPException": tlab_app.HTTPException,
        "secure_filename": secure_filename,
        "storage": __import__("lab.storage", fromlist=["storage"]),
        "galleries": galleries,
        "fetch_task_yaml_from_github": fetch_task_yaml_from_github,
        "_resolve_provider": nothing,
        "task_service": service,
        "cache": types.SimpleNamespace(invalidate=nothing),
        "Depends": lambda dependency: None,
        "get_user_and_team": None,
        "get_async_session": None,
        "AsyncSession": object,
    }
    router = tlab_app.functions(
        tlab_app.ROUTER,
        ["_parse_yaml_to_task_data", "_clear_interactive_launch_provider", "import_task_from_team_gallery"],
        namespace,
    )
    return types.SimpleNamespace(
        schema=schema,
        service=service,
        router=router,
        team_gallery=team_gallery,
        fetched=fetched,
        workspace=workspace,
        nothing=nothing,
    )


def stand_ins(folder: Path) -> dict[str, str]:
    """`uv` and `python` that record their arguments (the real python stays reachable as PYTHON)."""
    folder.mkdir(exist_ok=True)
    for name in ("uv", "python"):
        (folder / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{folder}/called"\n')
        (folder / name).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def called(folder: Path) -> list[str]:
    path = folder / "called"
    return path.read_text().splitlines() if path.is_file() else []


def run_line(line: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


# ---- task.yaml as the app reads it ---------------------------------------------------------------------------------
@pytest.mark.parametrize("plugin_id", PLUGIN_IDS)
def test_the_app_reads_our_task_yaml_with_secrets_as_its_examples_pass_them(app, plugin_id):
    task = app.router._parse_yaml_to_task_data(task_yaml_text(plugin_id))
    assert task["name"] == plugin_id.replace("_", "-") and task["run"].startswith("exec python ")
    example = yaml.safe_load(tlab_app.app_file(tlab_app.EXAMPLES / "nanochat" / "task.yaml").read_text())["envs"]
    for secret in ("HF_TOKEN", "WANDB_API_KEY"):
        assert task["env_vars"][secret] == example[secret] == f"{{{{secret._{secret}}}}}"
    assert task["env_vars"]["DLM_SOURCE"] == ""
    assert task["setup"].count("uv pip install") == 1


# ---- Git URL + directory -------------------------------------------------------------------------------------------
@pytest.fixture
def git_repository(tmp_path) -> Path:
    """This project's plugins as a Git repository with a `main` branch (the working tree, committed or not)."""
    repo = tmp_path / "origin"
    shutil.copytree(REPO / "plugins", repo / "plugins", ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "plugins"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    return repo


@pytest.mark.parametrize("plugin_id", PLUGIN_IDS)
def test_a_task_from_a_git_directory_runs_the_folder_the_host_copies(app, git_repository, tmp_path, plugin_id):
    """The app's launch clones the task's `github_repo_dir` into the job's folder (generate_github_clone_setup:
    a sparse checkout, then `cp -r <dir> .`): our `run` finds main.py in the copied folder."""
    clone = tlab_app.functions(tlab_app.GITHUB_UTILS, ["generate_github_clone_setup"], {"uuid": __import__("uuid")})
    script = clone.generate_github_clone_setup(str(git_repository), directory=f"plugins/{plugin_id}", branch="main")
    job_folder = tmp_path / "job"
    job_folder.mkdir()
    done = run_line(script, job_folder, {**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in job_folder.iterdir()) == [plugin_id], "only the task's directory is copied"
    assert (job_folder / plugin_id / "main.py").is_file()
    env = stand_ins(tmp_path / "bin")
    task = app.router._parse_yaml_to_task_data(task_yaml_text(plugin_id))
    assert run_line(task["run"], job_folder, env).returncode == 0
    assert called(tmp_path / "bin") == [f"python {plugin_id}/main.py"]


@pytest.mark.parametrize("plugin_id", PLUGIN_IDS)
def test_a_task_created_from_a_git_url_keeps_the_repository_its_task_yaml_names(app, tmp_path, plugin_id):
    """The app's create-from-Git path (task_service.create_task_from_github) stores the task.yaml's fields only, not
    the URL typed in the dialog: ours name this repository and the plugin's folder, which the launch clones and
    `setup` installs from (its default branch), nothing set by hand."""

    async def create() -> dict:
        task_id = await app.service.create_task_from_github(
            EXPERIMENT,
            "https://github.com/someone/typed-in-the-dialog",
            f"plugins/{plugin_id}",
            None,
            False,
            {},
            None,
            app.nothing,
            lambda url, directory, ref: asyncio.sleep(0, task_yaml_text(plugin_id)),
            app.router._parse_yaml_to_task_data,
        )
        return await app.service.task_get_by_id(task_id, experiment_id=EXPERIMENT)

    task = asyncio.run(create())
    url = gallery_entries()[0]["github_repo_url"]
    assert (task["github_repo_url"], task["github_repo_dir"]) == (url, f"plugins/{plugin_id}")
    bin_dir = tmp_path / "bin"
    env = {**stand_ins(bin_dir), "_TFL_JOB_ID": create_job(task["id"]), "_TFL_EXPERIMENT_ID": EXPERIMENT}
    (bin_dir / "python").unlink()  # the setup's python is the real one, with `lab`
    env["PATH"] = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    done = run_line(task["setup"], tmp_path, {**env, "DLM_SOURCE": ""})
    assert done.returncode == 0, done.stderr
    assert called(bin_dir) == [f"uv pip install git+{url}"]


@pytest.mark.parametrize("plugin_id", SWEEP_IDS)
def test_a_sweep_task_from_a_git_directory_clones_the_plugins_folder(app, git_repository, tmp_path, plugin_id):
    """The sweep task, created from the Git URL with directory `plugins/<id>/sweep`: the app fetches that folder's
    task.yaml but keeps its own github_repo_dir (`plugins/<id>`, not the dialog's directory), so the launch clones
    the folder that holds main.py; the record has the sweep settings, the plain task's has none."""

    async def fetch(url: str, directory: str | None, ref: str | None) -> str:
        return await asyncio.sleep(0, (REPO / (directory or "") / "task.yaml").read_text(encoding="utf-8"))

    async def create(directory: str) -> dict:
        task_id = await app.service.create_task_from_github(
            EXPERIMENT,
            str(git_repository),
            directory,
            "main",
            False,
            {},
            None,
            app.nothing,
            fetch,
            app.router._parse_yaml_to_task_data,
        )
        return await app.service.task_get_by_id(task_id, experiment_id=EXPERIMENT)

    sweep = asyncio.run(create(f"plugins/{plugin_id}/sweep"))
    plain = asyncio.run(create(f"plugins/{plugin_id}"))
    assert sweep["github_repo_dir"] == plain["github_repo_dir"] == f"plugins/{plugin_id}"
    assert sweep["name"] == f"{plain['name']}-sweep" and sweep["run"] == plain["run"]
    assert sweep["run_sweeps"] is True and sweep["sweep_config"] and sweep["sweep_metric"]
    assert not [key for key in SWEEP_KEYS if key in plain]
    clone = tlab_app.functions(tlab_app.GITHUB_UTILS, ["generate_github_clone_setup"], {"uuid": __import__("uuid")})
    script = clone.generate_github_clone_setup(str(git_repository), directory=sweep["github_repo_dir"], branch="main")
    job_folder = tmp_path / "job"
    job_folder.mkdir()
    done = run_line(script, job_folder, {**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert (job_folder / plugin_id / "main.py").is_file()
    env = stand_ins(tmp_path / "bin")
    assert run_line(sweep["run"], job_folder, env).returncode == 0
    assert called(tmp_path / "bin") == [f"python {plugin_id}/main.py"]


def test_the_task_files_and_the_gallery_name_one_repository():
    """A fork changes the repository's URL in each task.yaml and the gallery file: they must agree."""
    urls = {
        yaml.safe_load(task_yaml_text(p))["github_repo_url"] for p in (*PLUGIN_IDS, *(f"{s}/sweep" for s in SWEEP_IDS))
    }
    assert urls == {e["github_repo_url"] for e in gallery_entries()}
    for plugin_id in PLUGIN_IDS:
        assert yaml.safe_load(task_yaml_text(plugin_id))["github_repo_dir"] == f"plugins/{plugin_id}"
    for plugin_id in SWEEP_IDS:
        assert yaml.safe_load(task_yaml_text(f"{plugin_id}/sweep"))["github_repo_dir"] == f"plugins/{plugin_id}"


# ---- an uploaded folder --------------------------------------------------------------------------------------------
def browser_zip(folder: Path) -> bytes:
    """A folder as the New Task dialog uploads it (JSZip, paths `<folder name>/<file>`)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, f"{folder.name}/{path.relative_to(folder)}")
    return buffer.getvalue()


def upload(app, plugin_id: str) -> tuple[Path, dict]:
    """The app's create-from-upload path (task_service.create_task_from_directory_zip): the task's folder and record."""

    async def create() -> tuple[Path, dict]:
        task_id = await app.service.create_task_from_directory_zip(
            EXPERIMENT,
            browser_zip(REPO / "plugins" / plugin_id),
            {},
            None,
            app.nothing,
            app.router._parse_yaml_to_task_data,
        )
        task_dir = await app.service.get_task_dir(task_id, experiment_id=EXPERIMENT)
        return Path(task_dir), await app.service.task_get_by_id(task_id, experiment_id=EXPERIMENT)

    return asyncio.run(create())


@pytest.mark.parametrize("plugin_id", PLUGIN_IDS)
def test_an_uploaded_folder_is_copied_flat_and_run_finds_main(app, tmp_path, plugin_id):
    """The app copies the uploaded folder's files into the task's folder, which `lab.copy_file_mounts` lands in
    the job's working folder at launch: main.py at its top, where our `run` finds it."""
    task_dir, _ = upload(app, plugin_id)
    assert (task_dir / "main.py").is_file() and (task_dir / "task.yaml").is_file()
    env = stand_ins(tmp_path / "bin")
    run = app.router._parse_yaml_to_task_data(task_yaml_text(plugin_id))["run"]
    assert run_line(run, task_dir, env).returncode == 0
    assert called(tmp_path / "bin") == ["python main.py"]


@pytest.mark.xfail(
    strict=True,
    reason="the app's upload copies the folder's index.json (our plugin manifest) over the task's record, which "
    "loses `run`; its reserved-name rule (_TASK_RESERVED_FILENAMES) is applied to single-file uploads only",
)
def test_an_uploaded_folder_keeps_the_task_record(app):
    _, task = upload(app, "diffusion_llm_trainer")
    assert task.get("run", "").startswith("exec python "), task


# ---- our team gallery ----------------------------------------------------------------------------------------------
def gallery_entries() -> list[dict]:
    return json.loads(GALLERY.read_text(encoding="utf-8"))


def test_the_gallery_lists_the_four_tasks_the_two_sweeps_and_the_chat():
    entries = gallery_entries()
    assert [e["github_repo_dir"] for e in entries] == [
        "plugins/diffusion_llm_trainer",
        "plugins/diffusion_llm_trainer/sweep",
        "plugins/diffusion_dpo_trainer",
        "plugins/diffusion_dpo_trainer/sweep",
        "plugins/diffusion_grpo_trainer",
        "plugins/diffusion_evaluator",
        "interactive/diffusion_chat",
    ]
    sweeps = [e for e in entries if e["github_repo_dir"].endswith("/sweep")]
    assert all("sweep" in e["id"] and "sweep" in e["title"] for e in sweeps)
    assert not [e["id"] for e in entries if e not in sweeps and "sweep" in e["description"].replace("the sweep is", "")]
    assert len({e["id"] for e in entries}) == len(entries) and len({e["github_repo_url"] for e in entries}) == 1
    assert all(e["title"] and e["description"] for e in entries)
    assert entries[-1]["subtype"] == "interactive"


@pytest.mark.parametrize("index", range(len(gallery_entries())))
def test_the_apps_team_gallery_import_accepts_each_entry(app, index):
    entry = gallery_entries()[index]
    if not (REPO / entry["github_repo_dir"] / "task.yaml").is_file():
        pytest.skip(f"{entry['github_repo_dir']} is not in this checkout")
    shutil.copy(GALLERY, app.team_gallery)  # a team installs our gallery file as its team gallery
    request = app.schema.ImportTaskFromTeamGalleryRequest(gallery_id=entry["id"], experiment_id=EXPERIMENT)

    async def imported() -> dict:
        answer = await app.router.import_task_from_team_gallery(EXPERIMENT, request)
        assert answer["status"] == "success", answer
        return await app.service.task_get_by_id(answer["id"], experiment_id=EXPERIMENT)

    task = asyncio.run(imported())
    assert app.fetched == [(entry["github_repo_url"], entry["github_repo_dir"], entry["github_repo_branch"])]
    for key in ("github_repo_url", "github_repo_branch"):
        assert task[key] == entry[key], "the launch clones from the entry's repository"
    # the app keeps task.yaml's github_repo_dir over the entry's: a sweep entry's folder (plugins/<id>/sweep) holds
    # only its task.yaml, and the launch clones the plugin's folder, which holds main.py
    folder = entry["github_repo_dir"].removesuffix("/sweep")
    assert task["github_repo_dir"] == folder and (REPO / folder / "main.py").is_file()
    assert bool(task.get("run_sweeps")) == entry["github_repo_dir"].endswith("/sweep")
    assert task.get("subtype") == entry.get("subtype")
    assert task["run"] and task["setup"]


def create_job(task_id: str | None) -> str:
    """What the app's launch does: a job in the experiment whose job_data names the task it was queued from."""
    from lab import Experiment

    async def create() -> str:
        experiment = await Experiment.create_or_get(EXPERIMENT, create_new=True)
        job = await experiment.create_job()
        await job.update_job_data_fields({"task_id": task_id} if task_id else {})
        return str(job.id)

    return asyncio.run(create())


def test_an_imported_task_installs_from_its_repository_with_nothing_set(app, tmp_path):
    """A gallery import records the entry's repository and branch on the task; `setup` reads them through `lab`
    (job_data.task_id → the task record) and installs the project from there: no variable to fill in."""
    entry = gallery_entries()[0]
    shutil.copy(GALLERY, app.team_gallery)  # a team installs our gallery file as its team gallery
    request = app.schema.ImportTaskFromTeamGalleryRequest(gallery_id=entry["id"], experiment_id=EXPERIMENT)
    task_id = asyncio.run(app.router.import_task_from_team_gallery(EXPERIMENT, request))["id"]
    task = asyncio.run(app.service.task_get_by_id(task_id, experiment_id=EXPERIMENT))
    job_id = create_job(task_id)
    bin_dir = tmp_path / "bin"
    env = {**stand_ins(bin_dir), "_TFL_JOB_ID": job_id, "_TFL_EXPERIMENT_ID": EXPERIMENT, "DLM_SOURCE": ""}
    (bin_dir / "python").unlink()  # the setup's python is the real one, with `lab`
    env["PATH"] = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    done = run_line(task["setup"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert called(bin_dir) == [f"uv pip install git+{entry['github_repo_url']}@{entry['github_repo_branch']}"]
    # DLM_SOURCE, when set, wins over the recorded repository
    (bin_dir / "called").unlink()
    assert run_line(task["setup"], tmp_path, {**env, "DLM_SOURCE": str(REPO)}).returncode == 0
    assert called(bin_dir) == [f"uv pip install {REPO}"]


@pytest.mark.parametrize("plugin_id", PLUGIN_IDS)
def test_setup_without_a_source_or_with_a_bad_one_stops_saying_what_to_set(monkeypatch, tmp_path, plugin_id):
    (tmp_path / "workspace").mkdir()
    monkeypatch.setenv("TFL_WORKSPACE_DIR", str(tmp_path / "workspace"))
    setup = yaml.safe_load(task_yaml_text(plugin_id))["setup"]
    bin_dir = tmp_path / "bin"
    env = stand_ins(bin_dir)
    (bin_dir / "python").unlink()
    env["PATH"] = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    job_without_task = create_job(None)  # a task queued without a recorded repository (an uploaded folder)
    for values in ({}, {"_TFL_JOB_ID": job_without_task, "_TFL_EXPERIMENT_ID": EXPERIMENT}):
        done = run_line(setup, tmp_path, {**env, "DLM_SOURCE": "", **values})
        assert done.returncode != 0 and done.stderr.strip() == SETUP_MESSAGE, done.stderr
    done = run_line(setup, tmp_path, {**env, "DLM_SOURCE": str(tmp_path)})
    assert done.returncode != 0
    assert done.stderr.strip() == f"DLM_SOURCE={tmp_path} is not this project's checkout: {SETUP_MESSAGE}"
    assert called(bin_dir) == [], "nothing is installed from a bad source"
    for good in (str(REPO), "git+https://github.com/your-org/dlm-plugins@v1", "https://example.org/dlm.tar.gz"):
        assert run_line(setup, tmp_path, {**env, "DLM_SOURCE": good}).returncode == 0
    assert called(bin_dir)[-3:] == [
        f"uv pip install {REPO}",
        "uv pip install git+https://github.com/your-org/dlm-plugins@v1",
        "uv pip install https://example.org/dlm.tar.gz",
    ]


@pytest.mark.slow
def test_the_secrets_reach_the_job_by_environment_and_none_of_its_files(host, tmp_path):
    """HF_TOKEN and WANDB_API_KEY as the host passes them (its team secrets put in the task's envs): the job runs
    with them (W&B logging on, offline) and no file it writes, nor its record or log, holds either value."""
    from tests.integration.test_lab_backend import create_job as create_lab_job
    from tests.integration.test_lab_backend import run_task, trainer_parameters

    env, workspace = host
    secrets = {"HF_TOKEN": "hf_SENTINELhftoken0123456789", "WANDB_API_KEY": "0123456789abcdefSENTINELwandbkey00"}
    env = {**env, **secrets, "WANDB_MODE": "offline"}
    job_id = create_lab_job(env, trainer_parameters(tmp_path, train_steps=1, log_to_wandb=True))
    code, output = run_task(env, tmp_path, "diffusion_llm_trainer", job_id)
    assert code == 0, output
    assert list(tmp_path.rglob("*.wandb")), "the job logged to W&B (offline)"
    for value in secrets.values():
        assert value not in output
        leaks = [p for p in tmp_path.rglob("*") if p.is_file() and value.encode() in p.read_bytes()]
        assert not leaks, f"a secret was written to {leaks}"
