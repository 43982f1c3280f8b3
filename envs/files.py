"""Writes that a killed process cannot leave half-done."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary path next to `path` (same suffix), then rename onto `path`.

    Readers see the old file or the new one, never a partial one; the suffix is kept so that
    writers which pick a format from the name (imageio, torch.save) still work.
    """
    path = Path(path)
    for folder in (path.parent, *path.parent.parents):
        if folder.exists() and not folder.is_dir():  # mkdir would say only "File exists"
            raise NotADirectoryError(errno.ENOTDIR, f"is a file, not a folder, so {path.name} cannot be written in it",
                                     str(folder))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
