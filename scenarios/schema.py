"""The typed, frozen shape of a scenario file.

Every field has a type, a default where one makes sense, and a range. The loader
(`scenarios.loader`) turns YAML into these dataclasses and turns pydantic's
complaints into one line that names the file, the key and what is allowed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, StrictFloat, StrictInt, StrictStr
from pydantic.dataclasses import dataclass

# Unknown keys are errors: highway-env's own config dicts silently ignore typos, ours never do.
_STRICT = ConfigDict(extra="forbid")

# Smallest camera side we accept [px]: below this a 5 m car is under two pixels at any useful range.
MIN_CAMERA_SIDE_PX = 16
MAX_CAMERA_SIDE_PX = 1024

Number = StrictInt | StrictFloat

# Training episodes draw their seeds below this; evaluation seeds start at or above it, so an
# agent is never evaluated on an episode it trained on.
TRAINING_SEED_LIMIT = 1_000_000_000


@dataclass(frozen=True, config=_STRICT)
class BevCameraConfig:
    """Top-down camera centred on the ego, rotated so that the ego always points up."""

    width: StrictInt = Field(48, ge=MIN_CAMERA_SIDE_PX, le=MAX_CAMERA_SIDE_PX)  # [px], lateral
    height: StrictInt = Field(96, ge=MIN_CAMERA_SIDE_PX, le=MAX_CAMERA_SIDE_PX)  # [px], longitudinal
    pixels_per_meter: Number = Field(1.5, gt=0.1, le=20.0)  # [px/m]
    ego_row: Number = Field(0.7, ge=0.1, le=0.9)  # ego centre, as a fraction of height from the top

    @property
    def meters_ahead(self) -> float:
        """How far ahead of the ego centre the frame reaches [m]."""
        return self.ego_row * self.height / self.pixels_per_meter

    @property
    def meters_behind(self) -> float:
        """How far behind the ego centre the frame reaches [m]."""
        return (1 - self.ego_row) * self.height / self.pixels_per_meter

    @property
    def meters_to_each_side(self) -> float:
        """How far to the ego's left and to its right the frame reaches [m]."""
        return self.width / 2 / self.pixels_per_meter


@dataclass(frozen=True, config=_STRICT)
class FrontCameraConfig:
    """Forward-looking pinhole ("dash-cam") camera mounted on the ego's roof."""

    width: StrictInt = Field(96, ge=MIN_CAMERA_SIDE_PX, le=MAX_CAMERA_SIDE_PX)  # [px]
    height: StrictInt = Field(48, ge=MIN_CAMERA_SIDE_PX, le=MAX_CAMERA_SIDE_PX)  # [px]
    fov_deg: Number = Field(90.0, ge=20.0, le=150.0)  # horizontal field of view [deg]
    mount_height_m: Number = Field(1.5, ge=0.5, le=5.0)  # camera height above the road [m]
    pitch_deg: Number = Field(4.0, ge=-10.0, le=45.0)  # downward tilt [deg]
    max_range_m: Number = Field(120.0, ge=10.0, le=1000.0)  # nothing beyond this is drawn [m]


@dataclass(frozen=True, config=_STRICT)
class CameraConfig:
    """Which view the agent gets, how many frames are stacked, and each view's optics."""

    view: Literal["bev", "front"] = "bev"
    stack: StrictInt = Field(3, ge=1, le=16)  # frames stacked along channels -> C = 3 * stack
    bev: BevCameraConfig = BevCameraConfig()
    front: FrontCameraConfig = FrontCameraConfig()

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of one frame of the active view [px]."""
        optics = self.bev if self.view == "bev" else self.front
        return optics.height, optics.width


@dataclass(frozen=True, config=_STRICT)
class CorruptionConfig:
    """Sensor faults applied to every frame the agent sees. Pixel units are [0, 1]."""

    gaussian_noise_std: Number = Field(0.0, ge=0.0, le=1.0)  # std of additive noise
    blur_sigma_px: Number = Field(0.0, ge=0.0, le=10.0)  # Gaussian blur std [px]
    brightness_shift: Number = Field(0.0, ge=-1.0, le=1.0)  # added to every pixel
    frame_drop_prob: Number = Field(0.0, ge=0.0, le=1.0)  # chance a frame repeats the last one

    @property
    def active(self) -> bool:
        return any(
            value != 0.0
            for value in (
                self.gaussian_noise_std,
                self.blur_sigma_px,
                self.brightness_shift,
                self.frame_drop_prob,
            )
        )


@dataclass(frozen=True, config=_STRICT)
class SafetyConfig:
    """What counts as the whole route, for route completion and the driving score."""

    route_length_m: Number = Field(..., gt=0.0, le=100_000.0)  # [m]


@dataclass(frozen=True, config=_STRICT)
class EvaluationConfig:
    """Fixed evaluation episodes: seeds first_seed, first_seed + 1, ... (never used in training)."""

    first_seed: StrictInt = Field(..., ge=TRAINING_SEED_LIMIT, le=2**31 - 1)
    episodes: StrictInt = Field(50, ge=1, le=10_000)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(range(self.first_seed, self.first_seed + self.episodes))


@dataclass(frozen=True)
class KeyRange:
    """The values a highway-env config key may take. highway-env checks none of them: a zero
    frequency divides by zero, a negative count is ignored, a huge one hangs the spawner."""

    low: float
    high: float
    unit: str  # what the number counts, shown in the message
    integer: bool = False
    low_open: bool = False  # `low` itself is excluded

    def problem(self, value: Any) -> str | None:
        """Why `value` is out of range (None when it is fine)."""
        kind = "an integer" if self.integer else "a number"
        bracket = "(" if self.low_open else "["
        allowed = f"{kind} in {bracket}{self.low:g}, {self.high:g}] ({self.unit})"
        if self.integer and not isinstance(value, int):  # 3.0 too: highway-env counts with it (range, list * n)
            return f"must be {allowed}, got {value!r}"
        too_low = value <= self.low if self.low_open else value < self.low
        if too_low or value > self.high or value != value:  # value != value: NaN
            return f"must be {allowed}, got {value!r}"
        return None


# The ranges of highway-env's own keys that scenarios set (traffic, episode, reward), declared once.
# A numeric key not listed here must still be a finite number.
HIGHWAY_ENV_RANGES: dict[str, KeyRange] = {
    # episode
    "duration": KeyRange(0, 3600, "s", low_open=True),
    "policy_frequency": KeyRange(1, 100, "decisions per s", integer=True),
    "simulation_frequency": KeyRange(1, 1000, "physics steps per s", integer=True),
    # traffic
    "lanes_count": KeyRange(1, 10, "lanes", integer=True),
    "vehicles_count": KeyRange(0, 200, "vehicles", integer=True),
    "initial_vehicle_count": KeyRange(0, 200, "vehicles", integer=True),
    # 1 / density spaces the spawned cars: a denormal density made it infinite and highway-env failed
    # (tests/scenarios/test_fuzz.py found 2.2e-309); 0.01 already leaves ~3 km between cars
    "vehicles_density": KeyRange(0.01, 10, "relative density"),
    "ego_spacing": KeyRange(0, 10, "relative spacing", low_open=True),
    "spawn_probability": KeyRange(0, 1, "probability per step"),
    # reward weights (highway-env normalises their sum when normalize_reward is set)
    **{key: KeyRange(-100, 100, "reward weight") for key in (
        "collision_reward", "high_speed_reward", "right_lane_reward", "left_lane_reward", "lane_change_reward",
        "merging_speed_reward", "arrived_reward", "goal_reward", "left_lane_constraint", "on_road_reward",
    )},
}
SPEED_RANGE_KEYS = ("reward_speed_range",)  # [low, high] in m/s, mapped to 0..1 for the speed reward
MAX_SPEED_MPS = 100.0


@dataclass(frozen=True, config=_STRICT)
class HighwayEnvConfig:
    """Which highway-env environment simulates the scenario."""

    id: StrictStr


@dataclass(frozen=True, config=_STRICT)
class Scenario:
    """One driving scenario: simulator, traffic, episode, reward, camera, corruptions, evaluation.

    `traffic`, `episode` and `reward` hold highway-env config keys; the loader checks each
    one against the chosen environment's `default_config()` (name and type) and against
    `HIGHWAY_ENV_RANGES` (range).
    """

    name: StrictStr
    description: StrictStr
    highway_env: HighwayEnvConfig
    safety: SafetyConfig
    evaluation: EvaluationConfig
    traffic: dict[str, Any] = Field(default_factory=dict)
    episode: dict[str, Any] = Field(default_factory=dict)
    reward: dict[str, Any] = Field(default_factory=dict)
    # Needed where highway-env has no `duration` (merge ends on position, two-way never ends).
    max_episode_steps: StrictInt | None = Field(None, ge=1, le=100_000)
    camera: CameraConfig = CameraConfig()
    corruptions: CorruptionConfig = CorruptionConfig()
    source: StrictStr = ""  # the file it was loaded from (set by the loader)

    def highway_env_config(self) -> dict[str, Any]:
        """A fresh highway-env config dict: traffic, episode and reward keys merged."""
        return {**self.traffic, **self.episode, **self.reward}

    @property
    def episode_steps(self) -> int:
        """Most policy steps an episode can last: max_episode_steps, else duration [s] x [Hz]."""
        config = self.highway_env_config()
        from_duration = (
            int(config["duration"] * config["policy_frequency"])
            if config.get("duration") is not None
            else None
        )
        limits = [n for n in (self.max_episode_steps, from_duration) if n is not None]
        return min(limits)
