"""The CameraEnv methods explanations rely on (envs.backends): the scene of the newest frame, stable
vehicle ids, and re-rendering a scene with the env's own camera."""

from __future__ import annotations

import numpy as np
import pytest

from envs.backends import BACKEND_NAMES, get_backend


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_re_rendering_the_scene_gives_the_clean_frame_and_ids_are_stable(backend):
    env = get_backend(backend).make_env("highway")
    try:
        env.reset(seed=3)
        first_ids = env.vehicle_ids()
        for _ in range(3):
            env.step(1)  # IDLE
            scene, ids = env.scene(), env.vehicle_ids()
            assert ids[0] == 0 and len(ids) == len(scene.speeds) == len(set(ids.tolist()))
            assert np.array_equal(env.render_scene(scene), env.clean_frame)
        assert set(ids.tolist()) <= set(first_ids.tolist())  # the same vehicles keep their ids
    finally:
        env.close()


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_a_scene_without_a_vehicle_renders_without_its_pixels(backend):
    from envs.scene import Scene

    env = get_backend(backend).make_env("highway")
    try:
        env.reset(seed=3)
        scene = env.scene()
        keep = np.ones(len(scene.speeds), dtype=bool)
        keep[1] = False  # the first other vehicle
        fewer = Scene(scene.positions[keep], scene.headings[keep], scene.speeds[keep], scene.lengths[keep],
                      scene.widths[keep])
        with_all, without = env.render_scene(scene), env.render_scene(fewer)
        assert without.shape == with_all.shape
        empty = env.render_scene(Scene(scene.positions[:1], scene.headings[:1], scene.speeds[:1], scene.lengths[:1],
                                       scene.widths[:1]))
        changed = np.any(with_all != without, axis=2)
        assert changed.any()  # the car was in view: its pixels are gone
        # whatever changed is where the removed car was drawn: the road-only frame shows there
        assert np.array_equal(without[changed], empty[changed])
    finally:
        env.close()


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_render_scene_from_two_threads_at_once_gives_the_single_thread_frame(backend):
    """watch re-renders counterfactuals in its SHAP worker while the drawing loop does too; the fast
    camera's scratch buffers once made that an IndexError or a garbled frame."""
    import threading

    env = get_backend(backend).make_env("highway")
    try:
        env.reset(seed=3)
        scene = env.scene()
        expected = env.render_scene(scene).copy()
        wrong, errors = [], []

        def render_many() -> None:
            try:
                wrong.extend(i for i in range(150) if not np.array_equal(env.render_scene(scene), expected))
            except Exception as error:  # noqa: BLE001 (reported below)
                errors.append(error)

        threads = [threading.Thread(target=render_many) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and wrong == []
    finally:
        env.close()
