"""Writing inside a workspace without ever following a symbolic link.

A link planted in a workspace (a job's `.lock`, its log, a metrics file, a folder on the way to one) must not make
the SDK write where the link points. Every write of `plugin_sdk` under a workspace goes through here:

- the folders on the way are checked (and created) from a `root` the caller trusts (the workspace, the output
  folder the host gave): none of them below `root` may be a link;
- files written whole are written to a temporary file in the same folder and renamed over the target (a rename
  replaces a link, never writes through it), after refusing a target that is a link;
- files appended to or locked are opened with `O_NOFOLLOW`, so a link swapped in after the check is refused too.

A refused path raises `LinkRefused`, naming it.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, TextIO

from plugin_sdk.errors import PluginError


class LinkRefused(PluginError):
    """A path to be written passes through a symbolic link."""


def _refuse(path: Path) -> LinkRefused:
    target = os.readlink(path) if path.is_symlink() else "?"
    return LinkRefused(
        f"{path} is a symbolic link (to {target}); nothing is written through a link in the workspace: remove it"
    )


def check_no_links(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> Path:
    """`path` (absolute), after checking that neither it nor any folder between `root` and it is a link; without
    `root` (or with a `path` outside it), only `path` itself and its folder are checked."""
    path = Path(os.path.abspath(path))
    base = Path(os.path.abspath(root)) if root is not None else None
    if base is None or (base != path and base not in path.parents):
        base = path.parent.parent
    current = base
    for part in path.relative_to(base).parts:
        current = current / part
        if current.is_symlink():
            raise _refuse(current)
    return path


def make_dirs(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> Path:
    """Create the folder `path` (and those above it), refusing any link on the way below `root`."""
    path = check_no_links(path, root)
    path.mkdir(parents=True, exist_ok=True)
    return check_no_links(path, root)  # a link swapped in meanwhile


def write_text_atomic(
    path: str | os.PathLike[str],
    text: str,
    root: str | os.PathLike[str] | None = None,
    *,
    newline: str | None = None,
    mode: int = 0o644,
) -> None:
    """Write `text` through a temporary file in the same folder and a rename: a reader never sees half a file, and
    a link at `path` is refused, never written through. `mode`: 0o600 for a file only its owner may read (it never
    exists with a wider mode: mkstemp creates it owner-only)."""
    path = check_no_links(path, root)
    make_dirs(path.parent, root)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as handle:
            handle.write(text)
        os.chmod(tmp, mode)  # mkstemp makes it owner-only; a result file is for everyone who may read the folder
        check_no_links(path, root)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(
    path: str | os.PathLike[str], data: Any, root: str | os.PathLike[str] | None = None, *, mode: int = 0o644
) -> None:
    """Write JSON as `write_text_atomic` does."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str), root, mode=mode)


def open_no_follow(
    path: str | os.PathLike[str], mode: str = "a", root: str | os.PathLike[str] | None = None, **kwargs: Any
) -> TextIO:
    """`open(path, mode)` for appending (`a`) or locking (`a` too: it never truncates), refusing a link at `path`
    (`O_NOFOLLOW`, so one swapped in after the check as well) or on the way from `root`."""
    if mode not in ("a", "ab"):
        raise ValueError(f"open_no_follow opens for appending only, not {mode!r}")
    path = check_no_links(path, root)
    make_dirs(path.parent, root)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(path) from None
        raise
    return os.fdopen(fd, mode, **kwargs)
