"""`python run.py watch`: the replay's panels live in a pygame window.

    python run.py watch --run RUN [--episodes N] [--overlay both] [--every K] [--scenario S] [--backend B] [--speed X]

Keys: space pause/resume · n (or →) one step while paused · o next overlay · e next episode ·
s save a screenshot (PNG in --out) · q / Esc quit.

The agent steps in real time (the scenario's policy frequency); attention is drawn every frame.
SHAP keyframes are computed in a worker thread on its own copy of the policy (the student keeps
its last attention map on the module, so the drawing loop and the worker must not share one),
and appear when ready: the window keeps drawing meanwhile. With no display (no DISPLAY or
WAYLAND_DISPLAY, and SDL not told to use its dummy driver), it says so in one line and writes
the replay (`run.py replay`) instead.
"""

from __future__ import annotations

import copy
import math
import os
import queue
import threading
import time
from pathlib import Path

import numpy as np

from agents.explain.overlays import OVERLAYS, check_overlay
from agents.explain.panels import ShapView, Timeline, compose
from agents.explain.replay import check_out_dir, prepare, shap_tools, write_replays
from agents.explain.session import FrameRenderer, StepRecord, iterate_episode
from agents.explain.shapley import NSAMPLES, keyframe_steps
from agents.explain.vehicles import vehicle_reasons
from envs.files import atomic_write
from envs.policies import action_names

DRAW_FPS = 30  # window refresh [Hz]; the agent steps at the scenario's policy frequency


def display_available() -> bool:
    driver = os.environ.get("SDL_VIDEODRIVER", "")
    return driver in ("dummy", "offscreen") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class ShapWorker:
    """Computes SHAP keyframes (and their per-vehicle reasons) off the drawing loop, in a thread."""

    def __init__(self, env, loaded, backend: str, nsamples: int) -> None:
        explainer, self.cache = shap_tools(env, loaded, backend, nsamples)
        explainer.model = copy.deepcopy(explainer.model)  # its own modules: no shared last_attention
        self.explainer = explainer
        self.scenario = env.unwrapped.scenario
        self.renderer = FrameRenderer(env)  # render_scene is thread-safe (envs.backends.CameraEnv)
        self.requests: queue.Queue = queue.Queue()
        self.results: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="shap-keyframes", daemon=True)
        self.thread.start()

    def submit(self, episode: int, record: StepRecord) -> None:
        self.requests.put((episode, record))

    def _run(self) -> None:
        while True:
            item = self.requests.get()
            if item is None:
                return
            episode, record = item
            keyframe = self.cache.explain(self.explainer, record.observation)
            reasons = vehicle_reasons(self.scenario, self.explainer.model, self.renderer, record.stack,
                                      record.decision.action, record.decision.attention, keyframe.values)
            self.results.put((episode, record.step, ShapView(keyframe, record.step, record.frame), reasons))

    def close(self) -> None:
        self.requests.put(None)
        self.thread.join(timeout=5)


def watch(run: str | Path, episodes: int = 10, overlay: str = "both", every: int = 5, scenario: str | None = None,
          seed: int = 0, backend: str = "highway-env", out: str | Path | None = None, device: str = "cpu",
          logdir: str | Path = "runs", max_frames: int | None = None, nsamples: int = NSAMPLES,
          timings: dict[str, list[float]] | None = None, speed: float = 1.0) -> Path | None:
    """Open the window and play; returns the folder of saved screenshots (or the replay's, without a display).

    `speed`: playback speed, 1 = the scenario's policy frequency (real time). `timings` (benchmarks): the seconds of each policy step's work ("step": the env step, the decision
    and the per-vehicle reasons) and of each redraw ("draw": compose and blit) are appended to it."""
    from agents.evaluate import evaluation_seeds
    from envs.system import resolve_device

    overlay = check_overlay(overlay)
    keyframe_steps(0, every)
    if not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"--episodes must be a positive integer, got {episodes!r}")
    if not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed > 0):
        raise ValueError(f"--speed must be a positive number (1 = real time), got {speed!r}")
    if not display_available():
        target = out
        print(f"no display (DISPLAY is not set): writing a replay of {episodes} episode(s) instead"
              + (f" to {target}" if target else " to <run>/replays"))
        return write_replays(run, episodes=episodes, overlay=overlay, every=every, scenario=scenario, seed=seed,
                             backend=backend, out=out, device=device, logdir=logdir, nsamples=nsamples).out
    device = str(resolve_device(device))
    env, loaded, _ = prepare(run, scenario, backend, device, logdir)
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    worker = None
    try:
        out_dir = Path(out) if out is not None else loaded.run_dir / "screenshots"
        if out is not None:
            check_out_dir(out_dir)
        scenario_obj = env.unwrapped.scenario
        step_seconds = 1.0 / (float(env.metadata["render_fps"]) * speed)
        uses_shap = overlay in ("shap", "both")
        worker = ShapWorker(env, loaded, backend, nsamples) if uses_shap else None
        renderer = FrameRenderer(env)
        seeds = evaluation_seeds(scenario_obj, episodes, seed)
        pygame.display.init()  # not pygame.init(): no audio (ALSA complains on machines without sound)
        pygame.display.set_caption(f"clearlane watch: {loaded.run_dir.name}")
        screen = None
        overlays = [name for name in OVERLAYS]
        drawn, paused, quit_requested = 0, False, False
        clock = pygame.time.Clock()
        for episode_index, episode_seed in enumerate(seeds):
            records = iterate_episode(env, loaded.decision, episode_seed)
            timeline = Timeline(scenario_obj.episode_steps, action_names(env), keyframes=[])
            record: StepRecord | None = None
            shap_view, shap_reasons, episode_return = None, None, 0.0
            next_step_at, step_once, finished, dirty = 0.0, True, False, True
            title = f"{loaded.run_dir.name} on {scenario_obj.name} ({backend}), seed {episode_seed}"
            image = None
            while not quit_requested:
                now = time.perf_counter()
                if not finished and (step_once or (not paused and now >= next_step_at)):
                    step_began = time.perf_counter()
                    record = next(records, None)
                    if record is None:
                        finished = True
                    else:
                        episode_return += record.reward
                        timeline.add(record)
                        if worker is not None and record.step % every == 0:
                            timeline.keyframes.append(record.step)
                            worker.submit(episode_index, record)
                        reasons = vehicle_reasons(scenario_obj, loaded.decision, renderer, record.stack,
                                                  record.decision.action, record.decision.attention)
                        finished = not record.taken
                        dirty = True
                        if timings is not None:
                            timings.setdefault("step", []).append(time.perf_counter() - step_began)
                    step_once, next_step_at = False, now + step_seconds
                while worker is not None and not worker.results.empty():
                    result_episode, step, view, view_reasons = worker.results.get()
                    if result_episode == episode_index:
                        shap_view, shap_reasons, dirty = view, view_reasons, True
                for event in pygame.event.get():
                    if event.type == pygame.QUIT:
                        quit_requested = True
                    elif event.type == pygame.KEYDOWN:
                        if event.key in (pygame.K_q, pygame.K_ESCAPE):
                            quit_requested = True
                        elif event.key == pygame.K_SPACE:
                            paused = not paused
                        elif event.key in (pygame.K_n, pygame.K_RIGHT):
                            step_once = True
                        elif event.key == pygame.K_o:
                            overlay = overlays[(overlays.index(overlay) + 1) % len(overlays)]
                            dirty = True
                        elif event.key == pygame.K_e:
                            finished = True
                            step_once = False
                            record = None
                        elif event.key == pygame.K_s and screen is not None:
                            path = out_dir / f"watch-{episode_seed}-step{record.step if record else 0:03d}.png"
                            save_window(screen, path)
                            print(f"saved {path}")
                if record is None and finished:
                    break
                if dirty and record is not None:
                    draw_began = time.perf_counter()
                    fresh = shap_view if shap_view is not None and shap_view.step <= record.step else None
                    reasons_now = reasons
                    if fresh is not None and fresh.step == record.step and shap_reasons is not None:
                        reasons_now = copy.copy(shap_reasons)
                    status = " [paused]" if paused else ""
                    image = compose(record, overlay, timeline, episode_return, title + status, fresh, reasons_now)
                    if screen is None or screen.get_size() != (image.shape[1], image.shape[0]):
                        screen = pygame.display.set_mode((image.shape[1], image.shape[0]))
                    pygame.surfarray.blit_array(screen, np.ascontiguousarray(image.transpose(1, 0, 2)))
                    pygame.display.flip()
                    dirty = False
                    if timings is not None:
                        timings.setdefault("draw", []).append(time.perf_counter() - draw_began)
                drawn += 1
                if max_frames is not None and drawn >= max_frames:  # scripted runs: stop, keep the last window
                    quit_requested = True
                    if screen is not None:
                        save_window(screen, out_dir / "watch-last.png")
                if finished and not paused and time.perf_counter() >= next_step_at:
                    break
                clock.tick(DRAW_FPS)
            if quit_requested:
                break
        return out_dir
    finally:
        if worker is not None:
            worker.close()
        env.close()
        try:
            pygame.quit()
        except Exception:  # noqa: BLE001 (never initialised)
            pass


def save_window(screen, path: Path) -> Path:
    """The window's own surface as a PNG (pygame.image.save), written atomically."""
    import pygame

    return atomic_write(path, lambda tmp: pygame.image.save(screen, str(tmp)))
