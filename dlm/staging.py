"""Folders written whole or not at all: each is written in a hidden staging folder beside it, then renamed into place.

A staging folder is named `.<name>.partial-<pid>-<host>-<random>`: the process writing it, and a tag of the machine
that process runs on. A process killed while writing (kill -9, power loss) leaves its staging folder behind; the next
write beside it removes the ones whose process has ended on this machine. Folders of a live process, or of another
machine (one of a multi-machine run sharing the disk, whose processes this one cannot see), are kept. Hidden
folders are never a result: readers of results skip names that start with a dot.
A leaf: it imports nothing of dlm.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

_STAGING = re.compile(r"\..+\.partial-(\d+)-([0-9a-f]{8})-[a-z0-9_]+")


def host_tag() -> str:
    """This machine, in 8 hex digits (a host name can be long: the tag keeps staging names within 255 bytes)."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]


def staging_folder(destination: Path) -> Path:
    """A new, empty, private staging folder beside `destination`, owned by this process; stale staging folders
    beside it are removed first."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(destination.parent)
    prefix = f".{destination.name}.partial-{os.getpid()}-{host_tag()}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=destination.parent))


def remove_stale_staging(folder: Path) -> list[Path]:
    """Remove the staging folders in `folder` left by processes of this machine that have ended; returns them."""
    here = host_tag()
    removed = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        owner = _STAGING.fullmatch(path.name)
        if owner and owner[2] == here and path.is_dir() and not path.is_symlink() and _ended(int(owner[1])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _ended(pid: int) -> bool:
    """Whether no process `pid` runs on this machine (one of another user still runs: it is not ours to remove)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
