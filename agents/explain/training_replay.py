"""Replays in TensorBoard during training: watch the agent learn to drive, with its attention.

    replays = TrainingReplays(writer, "highway", "fast", every=50_000)   # writer: SB3's SummaryWriter
    replays.maybe_log(model, step)      # at the start of a rollout, after a DAgger iteration
    replays.final(model, step); replays.close()

Every `every` env steps (and at step 0 and the end) the current policy plays one deterministic
episode, always the scenario's first evaluation seed, so that the replays of one run show the same
road and traffic as the agent learns. Each frame is composed as `run.py replay` composes it
(agents.explain.panels: the camera with the student's attention and the per-vehicle numbers, the
top-down view, action probabilities and value, speed/TTC/headway, the timeline), and the episode
goes to TensorBoard's IMAGES tab as one animated GIF under `replay/<scenario>`, with a slider
over the training steps.

Why a GIF summary and not `SummaryWriter.add_video`: add_video encodes through moviepy and breaks
with moviepy >= 2. A video summary *is* an image summary holding a GIF (that is what add_video
writes), so the GIF is encoded here (envs.video.encode_gif) and written as that same proto.

SHAP is left out of these replays: a keyframe costs ~0.5 s and needs the run's recorded background;
`run.py replay --run RUN` explains any checkpoint fully. Playing a replay does not touch the
training's random generators (agents.safety_board.untouched_rng), so turning replays on or off
does not change what is trained.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from agents.explain.decision import DecisionModel
from agents.explain.replay import episode_frames
from agents.explain.session import make_env, play_episode
from envs.video import encode_gif

log = logging.getLogger(__name__)

TAG_PREFIX = "replay"


def replay_tag(scenario: str) -> str:
    return f"{TAG_PREFIX}/{scenario}"


def write_gif_summary(writer, tag: str, frames: list[np.ndarray], fps: float, step: int) -> int:
    """Frames (h, w, 3) uint8 RGB -> one animated-GIF image summary at `step`; returns its size [bytes]."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    height, width = frames[0].shape[:2]
    gif = encode_gif(frames, fps)
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif)
    # The writer's own events file (as add_image and add_video write theirs), so the replay lines up
    # with the run's scalars and is purged with them on --resume.
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
    writer.flush()
    return len(gif)


class TrainingReplays:
    """One replay of the current policy every `every` env steps; the time spent is counted in `seconds`."""

    def __init__(self, writer, scenario: str, backend: str, every: int, overlay: str = "attention",
                 start_step: int = 0) -> None:
        if every < 1:
            raise ValueError(f"replay interval must be positive, got {every}")
        self.writer = writer
        self.scenario = scenario
        self.backend = backend
        self.every = every
        self.overlay = overlay
        self.next_at = (start_step // every + 1) * every
        self.last_step: int | None = None
        self.seconds = 0.0  # [s] spent playing, composing and encoding replays
        self._env = None  # built on first use: a single env of the training's backend

    def log(self, model, step: int) -> int:
        """Play, compose and write one replay of `model` (an SB3 agent) at `step`; returns its frame count."""
        from agents.evaluate import evaluation_seeds
        from agents.safety_board import untouched_rng

        began = time.perf_counter()
        if self._env is None:
            self._env = make_env(self.scenario, self.backend)
        scenario = self._env.unwrapped.scenario
        seed = evaluation_seeds(scenario, 1)[0]
        policy = model.policy
        was_training = policy.training
        policy.set_training_mode(False)
        try:
            with untouched_rng():
                decision = DecisionModel(policy)
                episode = play_episode(self._env, decision, seed)
                title = f"{scenario.name} ({self.backend}), seed {seed}, {step:,} training steps"
                frames = episode_frames(self._env, decision, episode, self.overlay, title)
        finally:
            policy.set_training_mode(was_training)
        size = write_gif_summary(self.writer, replay_tag(scenario.name), frames,
                                 float(self._env.metadata["render_fps"]), step)
        self.last_step = step
        self.next_at = (step // self.every + 1) * self.every
        seconds = time.perf_counter() - began
        self.seconds += seconds
        log.info("replay at step %s: %d frames, return %.2f%s, %.1f s, %.1f MB", f"{step:,}", len(frames),
                 episode.episode_return, ", collision" if episode.summary.get("collision") else "", seconds, size / 1e6)
        return len(frames)

    def maybe_log(self, model, step: int) -> bool:
        if step < self.next_at:
            return False
        self.log(model, step)
        return True

    def final(self, model, step: int) -> None:
        """The final model's replay, unless the last one already showed that step."""
        if self.last_step != step:
            self.log(model, step)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
