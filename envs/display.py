"""Drawing highway-env's own views without a screen.

highway-env's viewer switches itself off (all-black frames) when SDL_VIDEODRIVER=dummy, and SDL
left to probe for a display on a headless machine prints "XDG_RUNTIME_DIR is invalid or not set".
SDL's "offscreen" driver needs neither a display nor XDG_RUNTIME_DIR, and highway-env keeps its
viewer on under it. Its viewer renders to a surface in any case (`offscreen_rendering`), so no
window opens either way.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

HEADLESS_DRIVER = "offscreen"


@contextmanager
def offscreen_video_driver() -> Iterator[None]:
    """Within the block, SDL uses the offscreen driver unless the user chose a real one (x11, ...)."""
    saved = os.environ.get("SDL_VIDEODRIVER")
    replace = saved in (None, "", "dummy")
    if replace:
        os.environ["SDL_VIDEODRIVER"] = HEADLESS_DRIVER
    try:
        yield
    finally:
        if replace:
            if saved is None:
                os.environ.pop("SDL_VIDEODRIVER", None)
            else:
                os.environ["SDL_VIDEODRIVER"] = saved
