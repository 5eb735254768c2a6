"""Writing files so that a crash never leaves half of one, and where refine keeps its caches.

One rule for every file refine writes whole: write a temp file beside it, then rename it over
the old one, so a reader sees the old file or the new one, never a mix. A file a user would lose
work without (annotations, manifests, checkpoint bookkeeping, results, run state) is also made
durable: the temp file is fsynced before the rename and the directory after it, so a power cut
cannot undo what was reported done. Caches (recomputable) pass `durable=False` and skip the fsyncs.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

CACHE_ENV = "REFINE_CACHE_DIR"


def atomic_write(path: str | Path, data: str | bytes, durable: bool = True) -> None:
    """Replace `path` with `data` (text is UTF-8) atomically; see the module's rule for `durable`."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    # unique per process and host: shards on a shared filesystem never share a temp file
    temp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temp, "wb") as handle:
            handle.write(payload)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(directory: str | Path) -> None:
    """Make a rename or a new file in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cache_dir(name: str) -> Path:
    """`<root>/<name>`, the root being $REFINE_CACHE_DIR, else $XDG_CACHE_HOME/refine, else
    ~/.cache/refine. Every cache of refine lives under it: `annotations` (teacher answers),
    `stats` (dataset statistics of read-only data folders), `demo` (the demo dataset's files)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "refine"
    return base / name
