"""The batched top-down camera looks like the reference one (envs.bev_camera) on the same state."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from highway_env.road.road import RoadNetwork

from envs import palette
from envs.bev_camera import BevCamera
import envs.fast.camera as fast_camera
from envs.fast.camera import BatchedBevCamera
from envs.road_map import build_road_map
from envs.scene import Scene
from scenarios import load_scenario
from scenarios.schema import BevCameraConfig

LANE_WIDTH = 4.0  # [m] highway-env's straight_road_network: lane i centred at y = 4 i
SCENES = 24  # per scenario; enough for every ego lane x heading pair, several times over
OTHERS = 7  # other vehicles per scene
# Thresholds, from measurements over these scenes (see each test for the measured values).
# The residual differences are cv2's own quirks: warpAffine's 1/32 px fixed point, and
# fillPoly(LINE_AA)'s edges, which are smooth on vertical edges but stepped on horizontal ones.
MAX_FRAME_MEAN_ABS_DIFF = 2.5  # grey levels, any one frame (measured <= 1.7)
MAX_MEAN_ABS_DIFF = 1.5  # grey levels, over all frames (measured 0.9 - 1.0)
MIN_VEHICLE_IOU = 0.85  # of clearly vehicle-coloured pixels, over all frames (measured >= 0.9)
COLOUR_TOLERANCE = 40  # a pixel is "clearly" a colour when every channel is within this


@dataclass(frozen=True)
class States:
    """B scenes as the batched camera takes them; (B, N) each, column 0 the ego."""

    x: np.ndarray  # [m]
    y: np.ndarray  # [m]
    heading: np.ndarray  # [rad]
    length: np.ndarray  # [m]
    width: np.ndarray  # [m]
    present: np.ndarray  # bool

    def tensors(self, device: str = "cpu") -> tuple[torch.Tensor, ...]:
        floats = [torch.tensor(a, dtype=torch.float32, device=device)
                  for a in (self.x, self.y, self.heading, self.length, self.width)]
        return (*floats, torch.tensor(self.present, device=device))

    def scene(self, b: int) -> Scene:
        """Scene `b` for the reference camera: only the present vehicles, ego first."""
        keep = self.present[b]
        return Scene(
            positions=np.stack([self.x[b], self.y[b]], axis=1)[keep],
            headings=self.heading[b][keep], speeds=np.zeros(keep.sum()),
            lengths=self.length[b][keep], widths=self.width[b][keep],
        )

    def subset(self, rows) -> States:
        return States(*(a[rows] for a in (self.x, self.y, self.heading, self.length, self.width, self.present)))


def random_states(config: BevCameraConfig, lanes: int, count: int, seed: int) -> States:
    """Egos on every lane with heading 0 or +-0.15 rad, others around, some cut by the frame's edges."""
    rng = np.random.default_rng(seed)
    shape = (count, 1 + OTHERS)
    ego_x = rng.uniform(100.0, 9000.0, count)
    ahead = config.meters_ahead  # [m] frame's top edge from the ego
    behind = (1 - config.ego_row) * config.height / config.pixels_per_meter  # [m] bottom edge
    x = ego_x[:, None] + rng.uniform(-behind - 6.0, ahead + 6.0, shape)
    x[:, 1] = ego_x + ahead + rng.uniform(-2.0, 2.0, count)  # straddles the top edge
    x[:, 2] = ego_x - behind + rng.uniform(-2.0, 2.0, count)  # straddles the bottom edge
    y = LANE_WIDTH * rng.integers(0, lanes, shape) + rng.normal(0.0, 0.3, shape)
    heading = rng.normal(0.0, 0.05, shape)
    x[:, 0] = ego_x
    y[:, 0] = LANE_WIDTH * (np.arange(count) % lanes) + rng.normal(0.0, 0.2, count)
    heading[:, 0] = np.array([0.0, 0.15, -0.15])[(np.arange(count) // lanes) % 3]
    present = rng.random(shape) < 0.75
    present[:, 0] = True
    length, width = rng.uniform(4.5, 5.5, shape), rng.uniform(1.8, 2.2, shape)
    # Both cameras must see the same numbers: round everything to float32 once.
    as32 = [a.astype(np.float32).astype(np.float64) for a in (x, y, heading, length, width)]
    return States(*as32, present)


def reference_frames(config: BevCameraConfig, lanes: int, states: States) -> np.ndarray:
    """(B, H, W, 3) int frames of envs.bev_camera on highway-env's straight road."""
    camera = BevCamera(config)
    road_map = build_road_map(RoadNetwork.straight_road_network(lanes, speed_limit=30), camera.map_pixels_per_meter)
    return np.stack([camera.render(road_map, states.scene(b)) for b in range(len(states.x))]).astype(int)


def fast_frames(camera: BatchedBevCamera, states: States) -> np.ndarray:
    """(B, H, W, 3) int frames of the batched camera."""
    return camera.render(*states.tensors()).permute(0, 2, 3, 1).cpu().numpy().astype(int)


def colour_mask(frames: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """(B, H, W) bool: pixels clearly of `colour`."""
    return (np.abs(frames - np.array(colour)).max(axis=-1) < COLOUR_TOLERANCE)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture(scope="module", params=[("highway", 3), ("highway-dense", 4)], ids=["3-lanes", "4-lanes"])
def setup(request):
    """(config, lanes, camera, states, reference frames) for one shipped scenario."""
    name, lanes = request.param
    scenario = load_scenario(name)
    assert scenario.traffic["lanes_count"] == lanes
    config = scenario.camera.bev
    states = random_states(config, lanes, SCENES, seed=lanes)
    return config, lanes, BatchedBevCamera(config, lanes), states, reference_frames(config, lanes, states)


def test_frames_are_rgb_uint8_on_the_camera_device(setup):
    config, _, camera, states, _ = setup
    frames = camera.render(*states.subset(slice(0, 5)).tensors())
    assert frames.shape == (5, 3, config.height, config.width)
    assert frames.dtype == torch.uint8 and frames.device.type == "cpu" and frames.is_contiguous()


def test_rendering_into_out_gives_the_same_frames(setup):
    """`out` may be a strided view, e.g. the newest slot of a frame stack; nothing else is written."""
    config, _, camera, states, _ = setup
    expected = camera.render(*states.tensors())
    stack = torch.full((SCENES, 3, 3, config.height, config.width), 7, dtype=torch.uint8)
    returned = camera.render(*states.tensors(), out=stack[:, 1])
    assert returned.data_ptr() == stack[:, 1].data_ptr()
    assert torch.equal(stack[:, 1], expected)
    assert (stack[:, 0] == 7).all() and (stack[:, 2] == 7).all()
    with pytest.raises(ValueError, match="out must be"):
        camera.render(*states.tensors(), out=stack[:-1, 1])


def test_frames_drawn_in_chunks_equal_frames_drawn_at_once(setup, monkeypatch):
    """On CPU frames are drawn a chunk at a time; chunk boundaries must not show."""
    _, _, camera, states, _ = setup
    at_once = camera.render(*states.tensors())
    monkeypatch.setattr(fast_camera, "CPU_CHUNK_FRAMES", 5)  # 24 frames: 4 chunks of 5, then 4
    assert torch.equal(camera.render(*states.tensors()), at_once)
    ego_only = states.subset((slice(None), slice(0, 1)))  # chunks without any other vehicle
    monkeypatch.setattr(fast_camera, "CPU_CHUNK_FRAMES", SCENES)
    alone = camera.render(*ego_only.tensors())
    monkeypatch.setattr(fast_camera, "CPU_CHUNK_FRAMES", 5)
    assert torch.equal(camera.render(*ego_only.tensors()), alone)


def test_frames_look_like_the_reference_camera(setup):
    _, _, camera, states, expected = setup
    frames = fast_frames(camera, states)
    per_frame = np.abs(frames - expected).mean(axis=(1, 2, 3))  # grey levels
    assert per_frame.max() <= MAX_FRAME_MEAN_ABS_DIFF, per_frame
    assert per_frame.mean() <= MAX_MEAN_ABS_DIFF, per_frame.mean()
    for colour in (palette.EGO_VEHICLE, palette.OTHER_VEHICLE):
        reference_mask = colour_mask(expected, colour)
        assert reference_mask.sum() > 100  # the scenes do show vehicles
        assert iou(colour_mask(frames, colour), reference_mask) >= MIN_VEHICLE_IOU, colour


def test_road_looks_like_the_reference_at_any_pose(setup):
    """Egos anywhere, even off the road or crosswise: the road raster is sampled like warpAffine."""
    config, lanes, camera, _, _ = setup
    rng = np.random.default_rng(7)
    count = 16
    states = States(
        x=rng.uniform(10.0, 9900.0, (count, 1)), y=rng.uniform(-30.0, 4.0 * lanes + 30.0, (count, 1)),
        heading=rng.uniform(-np.pi, np.pi, (count, 1)),
        length=np.full((count, 1), 5.0), width=np.full((count, 1), 2.0), present=np.ones((count, 1), dtype=bool),
    )
    states = States(*(a.astype(np.float32).astype(np.float64) for a in (
        states.x, states.y, states.heading, states.length, states.width)), states.present)
    difference = np.abs(fast_frames(camera, states) - reference_frames(config, lanes, states))
    assert difference.mean() <= 1.0  # measured 0.3
    assert (difference.max(axis=-1) > 20).mean() < 0.01  # a few edge pixels at most (measured 0.2 %)


def test_absent_vehicles_are_not_drawn(setup):
    _, _, camera, states, _ = setup
    some = states.subset(slice(0, 6))
    # Put every other vehicle right in front of its ego, where it would surely show.
    x = some.x.copy()
    x[:, 1:] = x[:, :1] + 8.0 * np.arange(1, OTHERS + 1)
    y = np.repeat(some.y[:, :1], 1 + OTHERS, axis=1)
    shown = States(x, y, some.heading, some.length, some.width, np.ones_like(some.present))
    hidden = States(x, y, some.heading, some.length, some.width, np.eye(1, 1 + OTHERS, dtype=bool).repeat(6, 0))
    ego_only = hidden.subset((slice(None), slice(0, 1)))
    assert (fast_frames(camera, hidden) == fast_frames(camera, ego_only)).all()
    assert (fast_frames(camera, shown) != fast_frames(camera, ego_only)).any(axis=(1, 2, 3)).all()


def test_a_batch_renders_like_each_env_alone(setup):
    """Same frames (identical here); the tolerance is for CPUs whose vectorised and scalar
    sin/cos differ by an ulp, which could tip a faint antialiased edge pixel by a grey level."""
    _, _, camera, states, _ = setup
    together = fast_frames(camera, states)
    alone = np.concatenate([fast_frames(camera, states.subset(slice(b, b + 1))) for b in range(SCENES)])
    difference = np.abs(together - alone)
    assert difference.max() <= 2
    assert (difference > 0).mean() < 1e-4


def test_dashes_repeat_every_period_so_x_can_be_folded(setup):
    """The raster's markings are periodic with the camera's period, and far x renders as road."""
    config, lanes, camera, states, _ = setup
    road_map = build_road_map(RoadNetwork.straight_road_network(lanes, speed_limit=30), config.pixels_per_meter)
    period = camera.period_px
    for start in (100, 2000, 7000):
        assert (road_map.image[:, start:start + period] == road_map.image[:, start + period:start + 2 * period]).all()
    period_m = period / config.pixels_per_meter
    one = states.subset(slice(0, 1))
    moved = States(one.x + 3 * period_m, one.y, one.heading, one.length, one.width, one.present)
    beyond_the_end = States(one.x + 12 * period_m, one.y, one.heading, one.length, one.width, one.present)
    assert beyond_the_end.x[0, 0] > 10_000.0
    frame = fast_frames(camera, one)
    assert np.abs(fast_frames(camera, moved) - frame).mean() < 0.5  # float32 rounding of x only
    assert np.abs(fast_frames(camera, beyond_the_end) - frame).mean() < 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_renders_like_the_cpu():
    config = load_scenario("highway").camera.bev
    states = random_states(config, 3, 32, seed=11)
    on_cpu = BatchedBevCamera(config, 3).render(*states.tensors())
    on_gpu = BatchedBevCamera(config, 3, device="cuda").render(*states.tensors("cuda"))
    assert on_gpu.device.type == "cuda"
    assert (on_gpu.cpu().int() - on_cpu.int()).abs().float().mean() < 0.05  # float rounding only
