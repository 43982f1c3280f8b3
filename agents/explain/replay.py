"""`python run.py replay`: one video per episode with explanation overlays, and an index.html.

    python run.py replay --run RUN [--episodes N] [--overlay attention|shap|both|none] [--every K]
                         [--scenario S] [--seed K] [--backend B] [--out DIR] [--gif]

Episode i plays evaluation seed `first_seed + K + i`, deterministically, as `run.py evaluate`
does, so a replay shows the episodes whose numbers evaluate reports. Each episode is played
first (recording every instant), then SHAP keyframes are computed every `--every` policy steps
(read from the run's keyframe cache when an earlier replay computed them), then the frames are
composed (agents.explain.panels) and written as H.264 MP4 (yuv420p: plays in browsers), and as
GIF with `--gif`. `index.html` lists every episode with its return, collision and driving score.

Everything is checked before anything is written; every file is written to a temporary name and
renamed (envs.files.atomic_write), so a failed replay leaves no half-written file.
"""

from __future__ import annotations

import html
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from agents.explain.decision import DecisionModel, LoadedRun, load_run
from agents.explain.overlays import check_overlay
from agents.explain.panels import ShapView, Timeline, compose
from agents.explain.session import Episode, FrameRenderer, make_env, play_episode
from agents.explain.shapley import (NSAMPLES, KeyframeCache, ShapExplainer, file_digest, keyframe_steps,
                                    load_or_record_background)
from agents.explain.vehicles import vehicle_reasons
from envs.files import atomic_write
from envs.policies import action_names
from envs.progress import progress_bar
from envs.video import write_video

logger = logging.getLogger(__name__)

INDEX_FILE = "index.html"
SUMMARY_FILE = "replays.json"
DEFAULT_EVERY = 5


@dataclass
class ReplayResult:
    out: Path
    index: Path
    videos: list[Path] = field(default_factory=list)
    episodes: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    shap_seconds: list[float] = field(default_factory=list)  # per computed (not cached) keyframe
    cache_hits: int = 0


def check_out_dir(out: Path) -> Path:
    """Make the output folder and prove it writable now, before minutes of work (OSError names the path)."""
    out = Path(out)
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(20, "is a file, not a folder, so the replay cannot be written there", str(folder))
    out.mkdir(parents=True, exist_ok=True)
    probe = out / ".replay-write-test"
    probe.write_bytes(b"")
    probe.unlink()
    return out


# -- the command ---------------------------------------------------------------------------------------


def prepare(run: str | Path, scenario: str | None, backend: str, device: str, logdir: str | Path):
    """(env, LoadedRun, scenario name): every user mistake about the run and scenario raises here."""
    from agents.runs import find_run, latest_model, read_run_config
    from envs.backends import get_backend

    get_backend(backend)  # a clear error for an unknown name, before the run is read
    run_dir = find_run(run, logdir)
    config = read_run_config(run_dir)
    latest_model(run_dir)  # a run without a model: FileNotFoundError before an env is built
    scenario_name = scenario or config.scenario
    env = make_env(scenario_name, backend)
    try:
        loaded = load_run(run_dir, env, device, logdir, scenario_name)
    except BaseException:
        env.close()
        raise
    return env, loaded, scenario_name


def shap_tools(env, loaded: LoadedRun, backend: str, nsamples: int, output: str = "action") -> tuple[ShapExplainer, KeyframeCache]:
    """The explainer over the run's stored background, and the run's keyframe cache."""
    scenario = env.unwrapped.scenario
    model_digest = file_digest(loaded.model_path)
    background = load_or_record_background(loaded.run_dir, env, loaded.decision, scenario.name, backend,
                                           model_digest=model_digest)
    explainer = ShapExplainer(loaded.decision, background, output=output, nsamples=nsamples)
    cache = KeyframeCache(loaded.run_dir / "explain" / "keyframes", model_digest, explainer.settings_digest())
    return explainer, cache


def episode_frames(env, decision: DecisionModel, episode: Episode, overlay: str, title: str, every: int = DEFAULT_EVERY,
                   explainer: ShapExplainer | None = None, cache: KeyframeCache | None = None,
                   shap_seconds: list[float] | None = None) -> list[np.ndarray]:
    """Compose every frame of a played episode: SHAP keyframes (cached; the time of each computed one
    appended to `shap_seconds`), per-vehicle reasons, panels. No explainer: attention only."""
    scenario = env.unwrapped.scenario
    renderer = FrameRenderer(env)
    keyframes = keyframe_steps(episode.length, every) if explainer is not None else []
    timeline = Timeline.of_records(episode.records, scenario.episode_steps, keyframes, action_names(env))
    frames, shap_view, episode_return = [], None, 0.0
    for record in episode.records:
        episode_return += record.reward
        values = None
        if record.step in keyframes:
            keyframe = cache.explain(explainer, record.observation)
            if not keyframe.cached and shap_seconds is not None:
                shap_seconds.append(keyframe.seconds)
            shap_view = ShapView(keyframe, record.step, record.frame)
            values = keyframe.values if keyframe.output == "action" else None
        reasons = vehicle_reasons(scenario, decision, renderer, record.stack, record.decision.action,
                                  record.decision.attention, values)
        frames.append(compose(record, overlay, timeline, episode_return, title, shap_view, reasons))
    return frames


def write_replays(run: str | Path, episodes: int = 3, overlay: str = "both", every: int = DEFAULT_EVERY,
                  scenario: str | None = None, seed: int = 0, backend: str = "highway-env",
                  out: str | Path | None = None, gif: bool = False, device: str = "cpu",
                  logdir: str | Path = "runs", nsamples: int = NSAMPLES) -> ReplayResult:
    """Write one video per episode and index.html to `out` (default: <run>/replays); see the module doc."""
    from agents.evaluate import evaluation_seeds
    from envs.system import resolve_device

    start = time.perf_counter()
    overlay = check_overlay(overlay)
    keyframe_steps(0, every)  # --every 0 or negative: ValueError now
    if not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"--episodes must be a positive integer, got {episodes!r}")
    if seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed}")
    device = str(resolve_device(device))
    env, loaded, scenario_name = prepare(run, scenario, backend, device, logdir)
    try:
        out = check_out_dir(Path(out) if out is not None else loaded.run_dir / "replays")
        result = ReplayResult(out, out / INDEX_FILE)
        uses_shap = overlay in ("shap", "both")
        explainer, cache = shap_tools(env, loaded, backend, nsamples) if uses_shap else (None, None)
        scenario_obj = env.unwrapped.scenario
        fps = float(env.metadata["render_fps"])
        seeds = evaluation_seeds(scenario_obj, episodes, seed)
        with progress_bar(len(seeds), "replay", unit="episodes") as bar:
            for index, episode_seed in enumerate(seeds):
                bar.describe(f"replay: playing episode {index + 1}/{len(seeds)}")
                episode = play_episode(env, loaded.decision, episode_seed)
                bar.describe(f"replay: explaining episode {index + 1}/{len(seeds)}")
                title = (f"{loaded.run_dir.name} on {scenario_obj.name} ({backend}), seed {episode_seed}, "
                         f"{loaded.num_timesteps:,} steps")
                frames = episode_frames(env, loaded.decision, episode, overlay, title, every, explainer, cache,
                                        result.shap_seconds)
                name = f"episode-{index:03d}-seed-{episode_seed}"
                result.videos.append(write_video(out / f"{name}.mp4", frames, fps))
                poster = frames[min(every, len(frames) - 1)]  # a keyframe: SHAP and per-vehicle numbers fresh
                atomic_write(out / f"{name}.png", lambda tmp: imageio.imwrite(tmp, poster, format="PNG"))
                row = {
                    "episode": index, "seed": episode_seed, "video": f"{name}.mp4", "poster": f"{name}.png",
                    "gif": f"{name}.gif" if gif else None, "return": episode.episode_return,
                    "collision": bool(episode.summary["collision"]), "driving_score": episode.summary["driving_score"],
                    "length": episode.length, "mean_speed": episode.summary["mean_speed"], "frames": len(frames),
                }
                if gif:
                    write_video(out / f"{name}.gif", frames, fps)
                result.episodes.append(row)
                bar.advance(1)
        result.cache_hits = cache.hits if cache is not None else 0
        result.seconds = time.perf_counter() - start
        meta = {"run": str(loaded.run_dir), "model": loaded.model_path.name, "num_timesteps": loaded.num_timesteps,
                "scenario": scenario_obj.name, "backend": backend, "overlay": overlay, "every": every,
                "nsamples": nsamples if uses_shap else None, "seconds": round(result.seconds, 2)}
        atomic_write(out / SUMMARY_FILE, lambda tmp: tmp.write_text(json.dumps({**meta, "episodes": result.episodes}, indent=2) + "\n"))
        atomic_write(result.index, lambda tmp: tmp.write_text(index_html(meta, result.episodes)))
    finally:
        env.close()
    return result


# -- index.html -----------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; background: #181818; color: #e8e8e8; margin: 24px; }
h1 { font-size: 20px; margin: 0 0 4px 0; } p.meta { color: #aaa; margin: 0 0 16px 0; font-size: 13px; }
table { border-collapse: collapse; font-size: 14px; } th, td { padding: 6px 12px; text-align: right; }
th { border-bottom: 1px solid #555; color: #bbb; font-weight: 600; } tr:nth-child(even) { background: #202020; }
td.crash { color: #ff6a6a; font-weight: 600; } td.ok { color: #8fd18f; } a { color: #8ab4ff; }
section { margin-top: 22px; } section h2 { font-size: 15px; margin: 0 0 6px 0; }
video { max-width: 100%; border: 1px solid #333; }
"""


def index_html(meta: dict, episodes: list[dict]) -> str:
    """A page with one table row and one embedded video per episode."""
    def esc(value) -> str:
        return html.escape(str(value))

    rows, videos = [], []
    for row in episodes:
        crash = row["collision"]
        gif = f' · <a href="{esc(row["gif"])}">GIF</a>' if row.get("gif") else ""
        rows.append(
            f'<tr><td><a href="#ep{row["episode"]}">{row["episode"]}</a></td><td>{row["seed"]}</td>'
            f'<td>{row["return"]:.2f}</td><td class="{"crash" if crash else "ok"}">{"yes" if crash else "no"}</td>'
            f'<td>{row["driving_score"]:.3f}</td><td>{row["length"]}</td><td>{row["mean_speed"]:.1f}</td>'
            f'<td><a href="{esc(row["video"])}">MP4</a>{gif}</td></tr>'
        )
        videos.append(
            f'<section id="ep{row["episode"]}"><h2>episode {row["episode"]} · seed {row["seed"]} · return '
            f'{row["return"]:.2f}{" · collision" if crash else ""}</h2>'
            f'<video controls preload="metadata" poster="{esc(row["poster"])}" src="{esc(row["video"])}"></video></section>'
        )
    returns = [row["return"] for row in episodes]
    crashes = sum(row["collision"] for row in episodes)
    summary = (f"{len(episodes)} episode(s): mean return {np.mean(returns):.2f}, {crashes} collision(s); "
               f"overlay {esc(meta['overlay'])}" + (f", SHAP keyframe every {meta['every']} steps" if meta.get("nsamples") else ""))
    return (
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>clearlane replay: "
        f"{esc(Path(meta['run']).name)}</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>{esc(Path(meta['run']).name)} on {esc(meta['scenario'])} ({esc(meta['backend'])})</h1>\n"
        f"<p class=\"meta\">{esc(meta['model'])}, {meta['num_timesteps']:,} training steps · {summary}</p>\n"
        "<table><tr><th>episode</th><th>seed</th><th>return</th><th>collision</th><th>driving score</th>"
        "<th>steps</th><th>speed [m/s]</th><th>video</th></tr>\n" + "\n".join(rows) + "\n</table>\n"
        + "\n".join(videos) + "\n</body></html>\n"
    )
