"""One line per event of a sweep, in the driver: each trial's evaluations as they come, its end, its failures.

Ray Tune's own status table (verbose=1) prints every few seconds whether or not anything changed; a
sweep of hours needs less: what each trial has reached, and how many are done. Imported only by
`agents.sweep` after Ray is known to be installed.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ray import tune


class SweepProgress(tune.Callback):
    """Prints `[done/total, elapsed] trial: ...` lines; `total` is the number of trials in the sweep."""

    def __init__(self, total: int, write: Callable[[str], None] = print) -> None:
        self.total = total
        self.write = write
        self.done = 0
        self.began = time.monotonic()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        what = "final evaluation" if result.get("final") else "evaluation"
        self._line(trial, f"{what} at {int(result.get('env_steps', 0)):,} env steps: return {result['eval/return']:.2f}, "
                          f"collisions {result['eval/collision_rate']:.1%}, driving score {result['eval/driving_score']:.3f}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        self._line(trial, "done")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, f"failed ({trial.error_file or 'no error file'}); Ray Tune retries it if attempts are left")

    def _line(self, trial: Any, text: str) -> None:
        elapsed = time.monotonic() - self.began
        name = trial.config.get("trial", {}).get("name", str(trial))
        self.write(f"[{self.done}/{self.total} trials done, {elapsed / 60:.1f} min] {name}: {text}")
