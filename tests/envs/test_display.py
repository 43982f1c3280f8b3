import os

import pytest

from envs.display import HEADLESS_DRIVER, offscreen_video_driver


@pytest.mark.parametrize("before", [None, "dummy"])
def test_offscreen_driver_inside_and_the_old_value_after(monkeypatch, before):
    if before is None:
        monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
    else:
        monkeypatch.setenv("SDL_VIDEODRIVER", before)
    with offscreen_video_driver():
        assert os.environ["SDL_VIDEODRIVER"] == HEADLESS_DRIVER
    assert os.environ.get("SDL_VIDEODRIVER") == before


def test_a_driver_the_user_chose_is_kept(monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "x11")
    with offscreen_video_driver():
        assert os.environ["SDL_VIDEODRIVER"] == "x11"
    assert os.environ["SDL_VIDEODRIVER"] == "x11"
