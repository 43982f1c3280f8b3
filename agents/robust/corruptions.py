"""Natural corruptions of the camera: the scenario's own sensor faults, one at a time, at two severities.

    python run.py evaluate --run RUN --corruption all              # every kind at severities 1 and 2
    python run.py evaluate --run RUN --corruption noise:2,drop:1

The faults are the envs' own (`envs.corruptions.SensorCorruption` on highway-env,
`envs.fast.corruptions.BatchedSensorCorruption` on the fast backend, applied to every new frame
before it enters the stack): an evaluation under a corruption is the plain evaluation of the
scenario with its `corruptions` block replaced by one fault. Nothing is re-implemented here.

Severity 1 is the level of the shipped `highway-noisy` scenario (the project's "degraded camera"),
severity 2 twice that:

    noise       additive Gaussian noise, std 0.05 / 0.10 of full scale
    blur        Gaussian blur, sigma 0.7 / 1.4 px
    brightness  brightness shift -0.15 / -0.30 of full scale (a darker scene)
    drop        dropped frames (the previous frame repeats), probability 0.05 / 0.10
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

from scenarios.schema import CorruptionConfig, Scenario

KINDS: dict[str, str] = {  # kind -> CorruptionConfig field
    "noise": "gaussian_noise_std",
    "blur": "blur_sigma_px",
    "brightness": "brightness_shift",
    "drop": "frame_drop_prob",
}
SEVERITIES: tuple[int, ...] = (1, 2)
REFERENCE_SCENARIO = "highway-noisy"  # its corruption levels are severity 1


@lru_cache(maxsize=1)
def reference_levels() -> dict[str, float]:
    """Severity 1 of each kind: the shipped `highway-noisy` scenario's sensor-corruption settings."""
    from scenarios import load_scenario

    config = load_scenario(REFERENCE_SCENARIO).corruptions
    return {kind: float(getattr(config, field)) for kind, field in KINDS.items()}


@dataclasses.dataclass(frozen=True)
class CorruptionSpec:
    """One sensor fault alone, at severity 1 (highway-noisy's level) or 2 (twice it)."""

    kind: str
    severity: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown corruption {self.kind!r}; choose from: {', '.join(KINDS)} (or all)")
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"corruption {self.kind}: severity must be one of {', '.join(map(str, SEVERITIES))}, got {self.severity!r}"
            )

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.severity}"

    @property
    def value(self) -> float:
        """The fault's setting (the CorruptionConfig field's units)."""
        return reference_levels()[self.kind] * self.severity

    def config(self) -> CorruptionConfig:
        return CorruptionConfig(**{KINDS[self.kind]: self.value})

    def describe(self) -> str:
        return f"{self.kind} (severity {self.severity}: {KINDS[self.kind]} = {self.value:g})"


def corrupted_scenario(scenario: Scenario, spec: CorruptionSpec) -> Scenario:
    """The scenario with this fault alone as its sensor corruption (its own corruption block replaced)."""
    return dataclasses.replace(scenario, corruptions=spec.config())


def parse_corruptions(text: str | None) -> list[CorruptionSpec]:
    """"all", or comma-separated KIND:SEVERITY (a KIND alone means both severities) -> specs, in order."""
    if text is None or not text.strip():
        return []
    specs: list[CorruptionSpec] = []
    for item in (part.strip() for part in text.split(",")):
        if item == "all":
            specs += [CorruptionSpec(kind, severity) for kind in KINDS for severity in SEVERITIES]
            continue
        kind, sep, severity = item.partition(":")
        if not sep:
            if kind not in KINDS:
                CorruptionSpec(kind, 1)  # raises the error naming the kinds
            specs += [CorruptionSpec(kind, level) for level in SEVERITIES]
            continue
        try:
            level = int(severity)
        except ValueError:
            raise ValueError(
                f"--corruption {item!r}: the severity must be one of {', '.join(map(str, SEVERITIES))}, "
                f"as in noise:2"
            ) from None
        specs.append(CorruptionSpec(kind.strip(), level))
    return list(dict.fromkeys(specs))  # in order, without repeats
