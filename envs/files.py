"""Writes that a killed process cannot leave half-done."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary path next to `path` (same suffix), then rename onto `path`.

    Readers see the old file or the new one, never a partial one; the suffix is kept so that
    writers which pick a format from the name (imageio, torch.save) still work. A place that cannot
    be written (a file in the way, no permission, a read-only disk) is an OSError naming `path`,
    raised before `write` starts: writers such as imageio or ffmpeg would otherwise print their own
    tracebacks about the temporary name.
    """
    path = Path(path)
    for folder in (path.parent, *path.parent.parents):
        if folder.exists() and not folder.is_dir():  # mkdir would say only "File exists"
            raise NotADirectoryError(errno.ENOTDIR, f"is a file, not a folder, so {path.name} cannot be written in it",
                                     str(folder))
    if not path.parent.exists():
        log.info("creating the folder %s", path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        try:
            with open(tmp, "wb"):
                pass  # can anything be written here at all?
        except OSError as error:
            raise type(error)(error.errno, error.strerror, str(path)) from None
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
