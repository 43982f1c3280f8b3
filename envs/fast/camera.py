"""Batched top-down camera: B frames of one road network in a few tensor ops.

It looks the same as `envs.bev_camera.BevCamera` (same road raster, same affine map, same
palette) but renders every environment of a batch at once, on any torch device. One camera
draws one road: a straight multi-lane highway (any length: its markings are periodic), or
any finite highway-env road network (merge, roundabout, intersection, exit, two-way, u-turn).

Road. The reference warps a window of `envs.road_map.build_road_map`'s raster bilinearly
(`cv2.warpAffine`, pixel centres at integer coordinates). Here the raster is supersampled
once by `ROAD_SUBSAMPLES` per pixel with exact bilinear interpolation, and packed as one
int32 (RGBA) per sample: for a straight highway only one period of its dashed markings
(the ego's x is folded into it), for any other network the whole raster (coordinates
beyond it are clamped to its border, which is grass). A frame is then only "index of the
nearest sample" (a few int32 adds and shifts per pixel, in fixed point) plus one gather.
OpenCV itself quantises its warp to 1/32 px; this quantises to 1/ROAD_SUBSAMPLES px, which
moves an edge pixel by a couple of grey levels at most. (A raster too large for
MAX_TABLE_SAMPLES at that many samples gets fewer, e.g. 1/6 px for exit's.)

Vehicles. Each visible vehicle gets a small patch of pixels around its centre (sized from
the largest footprint in its group: cars heading along the road get narrower patches than
turned ones); coverage = clamp(0.5 + signed distance to the footprint's edges [px], 0, 1),
with the footprint grown by AA_DILATION_PX as `cv2.fillPoly(LINE_AA)` does, quantised to
1/ALPHA_ONE opacity steps. Other vehicles are combined per pixel with an integer
`scatter_reduce(amax)` and blended only at their patch pixels; the ego, always at the same
pixel and pointing up, is blended last into a fixed slice of the frame. Only vehicles whose
footprint can reach the frame are drawn.

Pipeline. Per-env and per-vehicle terms are computed once for the batch; frames are then
drawn (on a CPU) CPU_CHUNK_FRAMES at a time, so that the per-pixel int32 scratch stays in
cache: road indices, gather, other vehicles (packed RGBA), then RGB planes straight into
the caller's `out` (e.g. a frame-stack slot), then the ego over those planes.

Each call syncs with the host twice (the number of visible vehicles, and the patch sizes),
which on CUDA costs tens of microseconds per batch, not per frame. (On a CPU, chunks add
one more, which costs nothing there.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from highway_env.road.graphics import LaneGraphics
from highway_env.road.road import RoadNetwork

from envs import palette
from envs.road_map import RoadMap, build_road_map
from scenarios.schema import BevCameraConfig

ROAD_SUBSAMPLES = 8  # road samples per pixel along each axis: 1/8 px positioning
MAX_TABLE_SAMPLES = 1 << 24  # fewer subsamples beyond this (64 MiB): huge views, exit's long raster
MAX_FRACTION_BITS = 16  # fraction bits of the per-pixel sample coordinates (fixed point)
MAX_STRIPE_PERIODS = 100_000  # search bound for a whole-pixel period of the dashes
PERIOD_TOLERANCE_PX = 1e-6  # a dash period this close to a whole number of pixels is exact
# cv2.fillPoly(LINE_AA) paints about this far outside a polygon's true edge [px]: its
# coverage falls from 1 to 0 between ~0.1 and ~1.3 px outside (measured on rectangles,
# averaged over edge directions). Dilating the footprint by it keeps the same sizes.
AA_DILATION_PX = 0.65
ALPHA_BITS = 7  # vehicle opacity in 1/128 steps: blending packed pixels stays within int32
ALPHA_ONE = 1 << ALPHA_BITS
CPU_CHUNK_FRAMES = 128  # frames rendered together on a CPU: ~2.4 MB of int32 scratch each, cache-sized
ROAD_SPEED_LIMIT = 30.0  # [m/s] irrelevant to the look, but the network is built as the simulator's


def _pack_rgb(image: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...) int32 whose little-endian bytes are R, G, B, 0."""
    rgba = np.zeros(image.shape[:-1] + (4,), dtype=np.uint8)
    rgba[..., :3] = image
    return rgba.view(np.int32)[..., 0]


def _stripe_period_px(road_map: RoadMap, usable_px: int) -> int:
    """Smallest whole number of pixels that holds a whole number of dash periods.

    The dashes repeat every `LaneGraphics.STRIPE_SPACING` metres (e.g. 6.495 px at 1.5 px/m,
    so 200 dashes = 1299 px). If no multiple fits in `usable_px` exactly, the closest one is
    used: its seam then shifts the dashes by a fraction of a pixel, once per period.
    """
    period = LaneGraphics.STRIPE_SPACING * road_map.pixels_per_meter  # [px]
    best, best_error = max(1, round(period)), math.inf
    for count in range(1, MAX_STRIPE_PERIODS + 1):
        pixels = count * period
        if pixels > usable_px:
            break
        error = abs(pixels - round(pixels))
        if error < PERIOD_TOLERANCE_PX:
            return int(round(pixels))
        if error < best_error:
            best, best_error = int(round(pixels)), error
    return best


def _subsamples(rows: int, columns: int) -> int:
    """Road samples per pixel along each axis for a table of rows x columns raster pixels:
    ROAD_SUBSAMPLES, or fewer where the table would exceed MAX_TABLE_SAMPLES."""
    return max(1, min(ROAD_SUBSAMPLES, int(math.sqrt(MAX_TABLE_SAMPLES / (rows * columns)))))


def _supersampled_table(image: np.ndarray, subsamples: int, first_col: int, columns: int) -> np.ndarray:
    """Bilinear samples of (R, C, 3) uint8 `image` every 1/k px, packed: (I, J) int32 RGBA.

    Sample (i, j) is at row i / k, column first_col + j / k, for i <= (R - 1) k, j < columns k.
    Pixel centres are at integer coordinates, as in cv2.warpAffine. Built one row phase at a
    time (rows i = q mod k), so no (I, J, 3) float temporary is ever allocated.
    """
    k = subsamples
    rows = image.shape[0]
    cols = first_col + np.arange(columns * k) / k  # (J,) [px]
    c0 = np.floor(cols).astype(np.int64)
    fc = (cols - c0)[None, :, None]  # (1, J, 1)
    img = image.astype(np.float64)
    along = img[:, c0] * (1 - fc) + img[:, c0 + 1] * fc  # (R, J, 3): columns interpolated
    along = np.concatenate([along, along[-1:]])  # the last row's lower neighbour (weight 0)
    table = np.empty(((rows - 1) * k + 1, columns * k), dtype=np.int32)
    for phase in range(k):
        r0 = np.arange(phase, table.shape[0], k) // k  # (I / k,) upper neighbour of rows i = phase mod k
        weight = phase / k
        samples = along[r0] * (1 - weight) + along[r0 + 1] * weight
        table[phase::k] = _pack_rgb(np.rint(samples).astype(np.uint8))
    return table


class BatchedBevCamera:
    """Renders B top-down frames at once, looking the same as envs.bev_camera.BevCamera.

    Built for one road: `lanes_count` for highway-env's straight highway (whose markings
    repeat, so one period of them serves any x), or `network` for any finite road network
    (its whole raster is kept: 5 to 60 MB at 1.5 px/m, see `_build_finite_road_table`).
    Keeps scratch tensors between calls (~12 MB at B = 1024 on CPU, where the per-pixel ones
    are per chunk; ~85 MB on a GPU), so one instance must not render from two threads at once.
    """

    def __init__(self, config: BevCameraConfig, lanes_count: int | None = None,
                 device: torch.device | str = "cpu", network: RoadNetwork | None = None) -> None:
        if (lanes_count is None) == (network is None):
            raise ValueError("give either lanes_count (a straight highway) or network (any finite road network)")
        self.config = config
        self.device = torch.device(device)
        self.height, self.width = config.height, config.width
        self.scale = float(config.pixels_per_meter)  # [px/m]
        self.ego_u = config.width / 2.0  # [px] ego centre column
        self.ego_v = config.ego_row * config.height  # [px] ego centre row
        corners = np.array([[0, 0], [config.width, 0], [0, config.height], [config.width, config.height]])
        # Farthest image corner from the ego [px]: bounds how far a frame reaches into the map.
        self.view_radius_px = float(np.max(np.hypot(corners[:, 0] - self.ego_u, corners[:, 1] - self.ego_v)))
        self.periodic = network is None  # the ego's x is folded into one period of the dashes
        if self.periodic:
            network = RoadNetwork.straight_road_network(lanes_count, speed_limit=ROAD_SPEED_LIMIT)
            self._build_road_table(build_road_map(network, self.scale), network.lanes_list()[0].length)
        else:
            self._build_finite_road_table(build_road_map(network, self.scale))
        # Pixel offsets from the ego [px]: du (W,) along image columns, dv (H,) along rows.
        self._du = torch.arange(self.width, dtype=torch.float64, device=self.device) - self.ego_u
        self._dv = torch.arange(self.height, dtype=torch.float64, device=self.device) - self.ego_v
        self._workspace: dict[str, torch.Tensor] = {}

    # ----------------------------------------------------------------------------- road table
    def _build_road_table(self, road_map: RoadMap, road_length: float) -> None:
        """Cut one dash period (plus a view radius each side) out of the raster and supersample it.

        The straight road's raster only changes along x through its dashes, which start at
        x = 0 and repeat every STRIPE_SPACING m, so any x can be folded into one period. The
        ends of the road (x < 0 or x > road_length = 10 km, where the raster turns to grass)
        are thus drawn as road too: the ego never gets near them.
        """
        s = self.scale
        image = road_map.image  # (rows, cols, 3) uint8
        rows = image.shape[0]
        margin = int(math.ceil(self.view_radius_px)) + 2  # [px] the view's reach out of the period
        spacing = LaneGraphics.STRIPE_SPACING * s  # [px]
        first_dash_col = -road_map.origin[0] * s  # raster column of x = 0 [px]
        start = int(math.ceil(first_dash_col + spacing)) + margin  # first dash skipped, to be safe
        last_col = int((road_length - road_map.origin[0]) * s - 2 * spacing) - margin  # before the last dash
        self.period_px = _stripe_period_px(road_map, last_col - start)
        self._period_start_col = start  # raster column folded x's land in: [start, start + period)
        self._table_first_col = start - margin  # raster column of table column 0
        self._raster_origin = (float(road_map.origin[0]), float(road_map.origin[1]))  # [m]
        self._raster_rows, self._raster_cols = rows, image.shape[1]
        columns = self.period_px + 2 * margin  # [px] of raster in the table
        k = _subsamples(rows, columns)
        # Sample (i, j) = raster at row i / k, column table_first_col + j / k. Rows beyond the
        # raster are clamped to its first / last row, which are off-road like warpAffine's border.
        table = _supersampled_table(image, k, self._table_first_col, columns)  # (I, J) int32
        # Folded columns never leave the table: only rows are clamped.
        self._store_road_table(table, k, column_extent=columns, clamp_columns=False)

    def _build_finite_road_table(self, road_map: RoadMap) -> None:
        """Supersample the whole raster: every finite network highway-env builds is at most a few
        hundred metres across (exit's, the longest, 1513 x 277 px at 1.5 px/m).

        Coordinates beyond the raster are clamped to its border (BORDER_REPLICATE, in effect),
        whereas BevCamera's warpAffine fills them with BORDER_CONSTANT = palette.OFF_ROAD. The
        same colour: `build_road_map` leaves MAP_MARGIN_M of grass around the road, so the
        raster's border rows and columns are all OFF_ROAD (their bilinear blend with the
        constant is OFF_ROAD too), and a frame entirely off the raster is all grass in both.
        They would differ only on a raster whose border is not grass.
        A raster too large for MAX_TABLE_SAMPLES at ROAD_SUBSAMPLES per pixel gets fewer, k:
        positions are then quantised to 1/k px (at most 1/2k px off; exit's k = 6: 1/12 px),
        and k = 1 would be nearest-neighbour sampling.
        """
        image = road_map.image  # (rows, cols, 3) uint8
        rows, cols = image.shape[:2]
        self.period_px = None
        self._period_start_col = None
        self._table_first_col = 0  # the table starts at the raster's column 0
        self._raster_origin = (float(road_map.origin[0]), float(road_map.origin[1]))  # [m]
        self._raster_rows, self._raster_cols = rows, cols
        k = _subsamples(rows, cols)
        # _supersampled_table interpolates towards each sample's right neighbour column: a copy of
        # the last column lets it reach column cols - 1 (samples beyond it are that border column).
        padded = np.concatenate([image, image[:, -1:]], axis=1)  # (rows, cols + 1, 3)
        table = _supersampled_table(padded, k, 0, cols)  # (I, cols * k) int32: columns 0 .. cols - 1/k
        # Clamped ego columns (see _road_terms) reach a view radius and a pixel beyond the raster.
        self._store_road_table(table, k, column_extent=cols + 2 * (self.view_radius_px + 2), clamp_columns=True)

    def _store_road_table(self, table: np.ndarray, subsamples: int, column_extent: float, clamp_columns: bool) -> None:
        """Keep `table` (I, J) int32 on the device and choose the fixed point of its coordinates.

        column_extent [px]: bound on |raster column - table_first_col| of any pixel, once the
        ego's column is folded or clamped. Rows: the ego's is clamped to within a view radius
        (+1 px) of the raster, so its pixels' are within rows + 2 (view radius + 2) px of row 0.
        """
        k = self.subsamples = subsamples
        self._max_sample_row, self._table_cols = table.shape[0] - 1, table.shape[1]
        self._max_sample_col = table.shape[1] - 1 if clamp_columns else None
        self._road_table = torch.from_numpy(table.reshape(-1)).to(self.device)  # (I*J,) int32
        # Fixed-point fraction bits: as many as keep the largest coordinate [samples] within
        # 2**30, so int32 terms and their sums (< 2**31) never overflow. With the table itself
        # capped at MAX_TABLE_SAMPLES (rows * cols * k**2), that leaves 16 bits for every highway-env
        # network at 1.5 px/m (exit's: 1660 px * 6 < 2**14 samples), and fewer only for rasters
        # thousands of pixels long (a 10 km highway's whole raster: 13); an absurd one raises.
        row_extent = self._raster_rows + 2 * (self.view_radius_px + 2)
        largest = max(column_extent, row_extent) * k + 1
        self._fraction_bits = min(MAX_FRACTION_BITS, 30 - math.ceil(math.log2(largest)))
        if self._fraction_bits < 1:
            raise ValueError(f"road raster too large for int32 sample coordinates: {largest:.0f} samples")

    # ----------------------------------------------------------------------------- rendering
    def render(self, x: torch.Tensor, y: torch.Tensor, heading: torch.Tensor,
               length: torch.Tensor, width: torch.Tensor, present: torch.Tensor,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """x, y [m], heading [rad]: (B, N) float32, column 0 is the ego. length, width [m]: (B, N) float32.
        present: (B, N) bool, which vehicles exist (absent ones are not drawn; the ego always exists).
        out: (B, 3, H, W) uint8 on the camera's device to draw into, e.g. the newest slot of a
        frame stack (it may be a strided view); a new tensor when None.
        Returns (B, 3, H, W) uint8 RGB frames on the camera's device: `out` when given."""
        x, y, heading, length, width, present = (
            t.to(self.device) for t in (x, y, heading, length, width, present)
        )
        batch = x.shape[0]
        out = self._output(out, batch)
        # On a CPU, frames are drawn a chunk at a time so that their int32 scratch stays in
        # cache; on a GPU all at once. Per-env and per-vehicle terms are computed for all.
        chunk = CPU_CHUNK_FRAMES if self.device.type == "cpu" else batch
        road = self._road_terms(x[:, 0], y[:, 0], heading[:, 0])
        cars = self._visible_others(x, y, heading, length, width, present)
        layout = self._layout(cars, length[:, 0], width[:, 0], chunk, batch)
        patches = [self._patches(group, chunk, name=str(number)) for number, group in enumerate(layout.groups)]
        ego = self._ego_paint(length[:, 0], width[:, 0], layout.ego_half_u, layout.ego_half_v)
        for number, start in enumerate(range(0, batch, chunk)):
            stop = min(start + chunk, batch)
            packed = self._road(road, start, stop)  # (C*H*W,) int32
            pixel, alpha = self._chunk_patches(layout.groups, patches, number)
            if pixel.numel():
                self._draw_others(packed, pixel, alpha)
            self._to_planar_rgb(packed.view(stop - start, self.height, self.width), out[start:stop])
            self._draw_ego(out[start:stop], ego, start, stop)
        return out

    def _output(self, out: torch.Tensor | None, batch: int) -> torch.Tensor:
        """`out`, checked, or a new (B, 3, H, W) uint8 tensor."""
        shape = (batch, 3, self.height, self.width)
        if out is None:
            return torch.empty(shape, dtype=torch.uint8, device=self.device)
        if tuple(out.shape) != shape or out.dtype != torch.uint8 or out.device.type != self.device.type:
            raise ValueError(f"out must be {shape} uint8 on {self.device}, got {tuple(out.shape)} {out.dtype} on {out.device}")
        return out

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A scratch tensor reused across calls, grown as needed.

        Fresh multi-megabyte tensors are returned to the OS when freed, so every call would
        page-fault them in again: on CPU that cost as much as the arithmetic itself.
        """
        numel = math.prod(shape)
        buffer = self._workspace.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.numel() < numel:
            grown = numel if buffer is None else max(numel, buffer.numel() * 3 // 2)  # vehicle counts vary
            buffer = torch.empty(grown, dtype=dtype, device=self.device)
            self._workspace[name] = buffer
        return buffer[:numel].view(shape)

    # -- road
    def _road_terms(self, ego_x: torch.Tensor, ego_y: torch.Tensor, ego_heading: torch.Tensor) -> _RoadTerms:
        """Each pixel's road-table coordinates, split into a per-row and a per-column term per env."""
        k, unit = self.subsamples, float(1 << self._fraction_bits)
        s = self.scale
        heading = ego_heading.double()  # per-env terms in float64: x ~ 1e4 m, fixed point ~ 1e9
        cos, sin = torch.cos(heading)[:, None], torch.sin(heading)[:, None]  # (B, 1)
        # Raster position of the ego [px]; on a highway its column folded into the period (see
        # the table). Beyond `reach`, every pixel of the frame is off the raster (clamped to its
        # grass border): clamping the ego there changes no pixel and keeps int32 from overflowing.
        reach = self.view_radius_px + 1
        ego_col = (ego_x.double() - self._raster_origin[0]) * s
        if self.periodic:
            ego_col = self._period_start_col + torch.remainder(ego_col - self._period_start_col, self.period_px)
        else:
            ego_col = ego_col.clamp(-reach, self._raster_cols - 1 + reach)
        ego_row = (ego_y.double() - self._raster_origin[1]) * s
        ego_row = ego_row.clamp(-reach, self._raster_rows - 1 + reach)
        # Inverse of BevCamera.world_to_image, in raster pixels (the raster has the camera's scale):
        #   col = ego_col - sin du - cos dv,  row = ego_row + cos du - sin dv.
        # Split into a (B, W) and a (B, H) term in fixed point [samples * unit], +0.5 sample to
        # round to nearest. unit and k (but for a reduced k, e.g. exit's 6) are powers of two, so
        # scaling the per-env factors by them first rounds exactly as scaling the sums would, with
        # fewer ops on (B, W) and (B, H). (With another k, the two differ by a float64 ulp.)
        scale = k * unit
        du, dv = self._du[None, :], self._dv[None, :]  # (1, W), (1, H)
        col_w = torch.sub(((ego_col - self._table_first_col) * scale)[:, None], (sin * scale) * du).add_(0.5 * unit)
        col_h = (-cos * scale) * dv  # (B, H)
        row_w = torch.add((ego_row * scale)[:, None], (cos * scale) * du).add_(0.5 * unit)  # (B, W)
        row_h = (-sin * scale) * dv
        return _RoadTerms(*(t.round_().to(torch.int32) for t in (row_h, row_w, col_h, col_w)))

    def _road(self, terms: _RoadTerms, start: int, stop: int) -> torch.Tensor:
        """(C*H*W,) int32 packed RGBA road frames of envs start..stop: the nearest road-table sample per pixel.

        The result is a workspace buffer, overwritten by the next call.
        """
        batch, height, width, bits = stop - start, self.height, self.width, self._fraction_bits
        row_h, row_w, col_h, col_w = (t[start:stop] for t in (terms.row_h, terms.row_w, terms.col_h, terms.col_w))
        # Per pixel (C, H, W) int32: sample index = row_sample * table_cols + col_sample.
        index = self._buffer("index", (batch, height, width), torch.int32)
        rows = self._buffer("rows", (batch, height, width), torch.int32)
        torch.add(row_h[:, :, None], row_w[:, None, :], out=rows)
        rows.bitwise_right_shift_(bits).clamp_(0, self._max_sample_row)
        torch.add(col_h[:, :, None], col_w[:, None, :], out=index)
        index.bitwise_right_shift_(bits)
        if self._max_sample_col is not None:  # a finite raster: columns beyond it take its border's colour
            index.clamp_(0, self._max_sample_col)
        index.add_(rows, alpha=self._table_cols)  # one pass for * and +
        packed = self._buffer("packed", (batch * height * width,), torch.int32)
        return torch.index_select(self._road_table, 0, index.view(-1), out=packed)

    def _to_planar_rgb(self, packed: torch.Tensor, out: torch.Tensor) -> None:
        """Packed RGBA (C, H, W) int32 -> `out` (C, 3, H, W) uint8 RGB planes; `packed` is consumed.

        Converting int32 to uint8 keeps the lowest byte, so each plane is one shift and one
        contiguous conversion: ~2x faster on CPU than a byte-strided copy of the RGBA bytes.
        """
        out[:, 0].copy_(packed)  # R: the lowest byte
        green = torch.bitwise_right_shift(packed, 8, out=self._buffer("index", packed.shape, torch.int32))
        out[:, 1].copy_(green)  # G (the blue byte above it is dropped)
        out[:, 2].copy_(packed.bitwise_right_shift_(16))  # B (the alpha byte is 0)

    # -- vehicles
    def _visible_others(self, x: torch.Tensor, y: torch.Tensor, heading: torch.Tensor,
                        length: torch.Tensor, width: torch.Tensor, present: torch.Tensor) -> _Footprints:
        """Image-space footprints of the present, non-ego vehicles that can touch the frame, sorted by env.

        One host sync (the number of visible vehicles), which on CUDA costs tens of microseconds per batch.
        """
        s = self.scale
        ego_heading = heading[:, :1]
        cos, sin = torch.cos(ego_heading), torch.sin(ego_heading)  # (B, 1)
        rel_x, rel_y = x - x[:, :1], y - y[:, :1]  # (B, N) [m] relative to the ego
        # Image position of each centre [px]: BevCamera.world_to_image.
        centre_u = self.ego_u + s * (-sin * rel_x + cos * rel_y)
        centre_v = self.ego_v + s * (-cos * rel_x - sin * rel_y)
        # Covered pixels lie within the footprint grown by `pad` on every side (square corners).
        pad = AA_DILATION_PX + 0.5  # [px]
        reach = torch.hypot(0.5 * s * length + pad, 0.5 * s * width + pad)  # (B, N) [px]
        visible = (
            present
            & (centre_u > -reach) & (centre_u < self.width - 1 + reach)
            & (centre_v > -reach) & (centre_v < self.height - 1 + reach)
        )
        visible[:, 0] = False  # the ego is drawn last, on top
        env, slot = visible.nonzero(as_tuple=True)  # (K,) each, row-major: sorted by env
        # Footprint axes in the image: ego frame (ahead, right) -> image (u, v) = (right, -ahead).
        relative = heading[env, slot] - ego_heading[env, 0]
        fwd_u, fwd_v = torch.sin(relative), -torch.cos(relative)  # unit vector along the length
        half_length, half_width = 0.5 * s * length[env, slot], 0.5 * s * width[env, slot]  # (K,) [px]
        return _Footprints(
            env=env, centre_u=centre_u[env, slot], centre_v=centre_v[env, slot], fwd_u=fwd_u, fwd_v=fwd_v,
            half_length=half_length, half_width=half_width,
            # Half extents of the covered area along u and v [px]: they size the patches.
            half_u=(half_length + pad) * fwd_u.abs() + (half_width + pad) * fwd_v.abs(),
            half_v=(half_length + pad) * fwd_v.abs() + (half_width + pad) * fwd_u.abs(),
        )

    def _layout(self, cars: _Footprints, ego_length: torch.Tensor, ego_width: torch.Tensor,
                chunk: int, batch: int) -> _Layout:
        """Patch sizes and each chunk's cars, as Python numbers.

        Most cars drive along the road, so their patches need be no wider than an unturned
        car's: 80% of highway's cars fit 6 x 10 px patches, while the most turned one in a
        batch needs 10 x 12 px. Cars thus come in two groups, "narrow" and the rest, each with
        patches sized for its largest footprint: ~40% fewer patch pixels to draw.
        One host sync for the sizes, one more for the chunks' cars, only with several chunks
        (i.e. on a CPU, where syncs are free).
        """
        pad = AA_DILATION_PX + 0.5  # [px]
        ego_half_u = 0.5 * self.scale * ego_width.max() + pad  # the ego points up
        ego_half_v = 0.5 * self.scale * ego_length.max() + pad
        zero = ego_half_u.new_zeros(())
        # Patch sides are floor(2 * half extent) + 1: narrow cars' are as small as an unturned car's.
        unturned = torch.floor(2 * (cars.half_width.max() + pad)) if cars.count else zero
        narrow = torch.floor(2 * cars.half_u) <= unturned  # (K,)
        order = torch.argsort((~narrow).to(torch.uint8), stable=True)  # narrow first; each group by env
        extents = torch.stack([  # [px] largest half extents of covered areas; 0 for an empty group
            torch.where(narrow, cars.half_u, 0).max() if cars.count else zero,
            torch.where(narrow, cars.half_v, 0).max() if cars.count else zero,
            torch.where(narrow, 0, cars.half_u).max() if cars.count else zero,
            torch.where(narrow, 0, cars.half_v).max() if cars.count else zero,
            ego_half_u, ego_half_v, narrow.sum().to(zero.dtype),
        ])
        narrow_u, narrow_v, wide_u, wide_v, ego_u, ego_v, narrow_count = extents.tolist()
        split = int(narrow_count)
        members = [(order[:split], narrow_u, narrow_v), (order[split:], wide_u, wide_v)]
        members = [(index, half_u, half_v) for index, half_u, half_v in members if index.numel()]
        selected = [cars.select(index) for index, _, _ in members]
        if chunk < batch and selected:  # each chunk's first car in each group (cars are sorted by env)
            starts = torch.arange(0, batch, chunk, device=self.device)
            firsts = torch.stack([torch.searchsorted(group.env, starts) for group in selected]).tolist()
        else:
            firsts = [[0] for _ in selected]
        groups = [_PatchGroup(cars=group, half_u=half_u, half_v=half_v, first_cars=first + [group.count])
                  for group, (_, half_u, half_v), first in zip(selected, members, firsts)]
        return _Layout(groups=groups, ego_half_u=ego_u, ego_half_v=ego_v)

    def _patches(self, group: _PatchGroup, chunk: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A group's patches of pixels around each car's centre, flattened car after car:
        (P,) int64 pixel index into its chunk's frames, (env mod chunk) * H * W + row * W + col,
        and (P,) int32 the car's opacity there, its coverage in 1/ALPHA_ONE steps (0 .. ALPHA_ONE).
        P = K * patch_v * patch_u.
        """
        height, width, cars = self.height, self.width, group.cars
        half_u, half_v, patch_u, patch_v = group.half_u, group.half_v, group.patch_u, group.patch_v
        # Patch pixel coordinates: (K, Pu) columns and (K, Pv) rows, the first just inside centre - half.
        u = torch.floor(cars.centre_u - half_u)[:, None] + 1 + torch.arange(patch_u, device=self.device)
        v = torch.floor(cars.centre_v - half_v)[:, None] + 1 + torch.arange(patch_v, device=self.device)
        shape = (cars.count, patch_v, patch_u)
        coverage = _rectangle_coverage(
            (u - cars.centre_u[:, None])[:, None, :],  # (K, 1, Pu) [px]
            (v - cars.centre_v[:, None])[:, :, None],  # (K, Pv, 1)
            cars.fwd_u[:, None, None], cars.fwd_v[:, None, None],
            cars.half_length[:, None, None], cars.half_width[:, None, None],
            out=(self._buffer("coverage" + name, shape, torch.float32), self._buffer("across", shape, torch.float32)),
        )  # (K, Pv, Pu)
        # Off-image patch pixels are clamped onto the border with zero coverage: they then
        # change nothing, and every write to a pixel below carries that pixel's final value.
        coverage.mul_(((u >= 0) & (u < width))[:, None, :]).mul_(((v >= 0) & (v < height))[:, :, None])
        col = u.clamp_(0, width - 1).long()[:, None, :]
        frame = torch.remainder(cars.env, chunk) * (height * width)  # (K,) first pixel of the car's frame
        row = v.clamp_(0, height - 1).long().mul_(width).add_(frame[:, None])[:, :, None]
        pixel = torch.add(row, col, out=self._buffer("pixel" + name, shape, torch.int64))
        # Quantised here, once: the union below is then an integer max (3x faster than a float
        # one on CPU), and max commutes with rounding, so the frames are the same.
        alpha = self._buffer("alpha" + name, shape, torch.int32)
        alpha.copy_(coverage.mul_(ALPHA_ONE).round_())
        return pixel.view(-1), alpha.view(-1)

    def _chunk_patches(self, groups: list[_PatchGroup], patches: list[tuple[torch.Tensor, torch.Tensor]],
                       number: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunk `number`'s patch pixels and opacities, (P_c,) each, all groups together:
        the union of footprints must see every patch at once."""
        pieces = []
        for group, (pixel, alpha) in zip(groups, patches):
            first, last = (car * group.patch_u * group.patch_v for car in group.first_cars[number:number + 2])
            if last > first:
                pieces.append((pixel[first:last], alpha[first:last]))
        if len(pieces) == 1:
            return pieces[0]
        count = sum(pixel.numel() for pixel, _ in pieces)  # 0 without any piece: empty buffers
        pixels = self._buffer("chunk_pixel", (count,), torch.int64)
        alphas = self._buffer("chunk_alpha", (count,), torch.int32)
        if pieces:
            torch.cat([pixel for pixel, _ in pieces], out=pixels)
            torch.cat([alpha for _, alpha in pieces], out=alphas)
        return pixels, alphas

    def _draw_others(self, packed: torch.Tensor, pixel: torch.Tensor, alpha: torch.Tensor) -> None:
        """Blend the other vehicles into the frames `packed` (C*H*W,) int32 in place, at their patch pixels.

        pixel, alpha: (P,) patch pixels of this chunk's cars and their opacity (see `_patches`).
        """
        count = pixel.numel()
        # Per-pixel opacity of the union of footprints, in the road's scratch "rows" memory:
        # cleared at the patch pixels only, then their max. (Scalar-valued or include_self=False
        # scatters are ~4x slower on CPU than these two.)
        union = self._buffer("rows", packed.shape, torch.int32)
        union.scatter_(0, pixel, self._buffer("zeros", (count,), torch.int32).zero_())
        union.scatter_reduce_(0, pixel, alpha, reduce="amax")
        alpha = torch.index_select(union, 0, pixel, out=self._buffer("union", (count,), torch.int32))
        rgba = torch.index_select(packed, 0, pixel, out=self._buffer("rgba", (count,), torch.int32))
        # Duplicate pixels all receive the same value (their union opacity): order does not matter.
        packed.scatter_(0, pixel, self._blend(rgba, alpha, palette.OTHER_VEHICLE))

    def _blend(self, rgba: torch.Tensor, alpha: torch.Tensor, colour: tuple[int, int, int]) -> torch.Tensor:
        """`colour` over packed RGBA int32 pixels at opacity `alpha` (same shape, int32 0 .. ALPHA_ONE).

        `rgba` is scratch and gets overwritten; the result is a workspace buffer. Works on two
        8-bit channels per int32 at once (R and B, then G alone), with the opacity in 1/128
        steps: every intermediate stays below 2**31, so int32 never overflows, and it is ~4x
        faster than blending per channel in float. Per channel:
        (channel * (128 - alpha) + colour * alpha + 64) >> 7, as `_draw_ego` computes it.
        """
        red, green, blue = colour
        half = ALPHA_ONE // 2  # round to nearest
        keep = torch.sub(ALPHA_ONE, alpha, out=self._buffer("keep", rgba.shape, torch.int32))
        red_blue = torch.bitwise_and(rgba, 0xFF00FF, out=self._buffer("red_blue", rgba.shape, torch.int32))
        red_blue.mul_(keep).add_(alpha, alpha=red | blue << 16).add_(half * 0x10001)  # both lanes
        red_blue.bitwise_right_shift_(ALPHA_BITS).bitwise_and_(0xFF00FF)  # drops R's shifted-out bits from B's lane
        green_lane = rgba.bitwise_right_shift_(8).bitwise_and_(0xFF)  # one lane: nothing to mask after the shift
        green_lane.mul_(keep).add_(alpha, alpha=green).add_(half)
        green_lane.bitwise_right_shift_(ALPHA_BITS).bitwise_left_shift_(8)
        return red_blue.bitwise_or_(green_lane)

    def _ego_paint(self, length: torch.Tensor, width: torch.Tensor, half_u: float, half_v: float) -> _EgoPaint:
        """The ego's blend terms over its fixed slice of every frame (it points up, centred at (ego_u, ego_v)).

        length, width: (B,) [m]; half_u, half_v [px]: largest half extents of its covered area.
        """
        u0 = max(0, int(math.floor(self.ego_u - half_u)) + 1)
        v0 = max(0, int(math.floor(self.ego_v - half_v)) + 1)
        u1 = min(self.width, int(math.floor(self.ego_u + half_u)) + 1)
        v1 = min(self.height, int(math.floor(self.ego_v + half_v)) + 1)
        u = torch.arange(u0, u1, dtype=torch.float32, device=self.device) - self.ego_u  # (Pu,) [px]
        v = torch.arange(v0, v1, dtype=torch.float32, device=self.device) - self.ego_v  # (Pv,)
        half_length = 0.5 * self.scale * length[:, None, None]  # (B, 1, 1) [px]
        half_width = 0.5 * self.scale * width[:, None, None]
        coverage = _rectangle_coverage(u[None, None, :], v[None, :, None], 0.0, -1.0, half_length, half_width)
        alpha = coverage.mul_(ALPHA_ONE).round_().to(torch.int32)[:, None]  # (B, 1, Pv, Pu) 0 .. ALPHA_ONE
        colour = torch.tensor(palette.EGO_VEHICLE, dtype=torch.int32, device=self.device)[None, :, None, None]
        return _EgoPaint(rows=slice(v0, v1), cols=slice(u0, u1), keep=ALPHA_ONE - alpha,
                         ink=(colour * alpha).add_(ALPHA_ONE // 2))

    def _draw_ego(self, frames: torch.Tensor, paint: _EgoPaint, start: int, stop: int) -> None:
        """Blend the ego into the finished RGB frames (C, 3, H, W) uint8 of envs start..stop, on top.

        Its slice is the same in every frame, so this is a few small ops per chunk, while the
        frames are still in cache. Same rounding as `_blend`, one channel at a time.
        """
        region = frames[:, :, paint.rows, paint.cols]  # (C, 3, Pv, Pu) uint8 view
        blended = region.to(torch.int32).mul_(paint.keep[start:stop]).add_(paint.ink[start:stop])
        region.copy_(blended.bitwise_right_shift_(ALPHA_BITS))


@dataclass(frozen=True)
class _RoadTerms:
    """Road-table coordinates of pixel (h, w) of frame b, in samples * 2**fraction_bits (int32):
    row = row_h[b, h] + row_w[b, w], col = col_h[b, h] + col_w[b, w]."""

    row_h: torch.Tensor  # (B, H)
    row_w: torch.Tensor  # (B, W)
    col_h: torch.Tensor  # (B, H)
    col_w: torch.Tensor  # (B, W)


@dataclass(frozen=True)
class _EgoPaint:
    """The ego over its slice of the frames: pixel = (pixel * keep + ink) >> ALPHA_BITS per channel."""

    rows: slice  # of the frame's rows (H)
    cols: slice  # of the frame's columns (W)
    keep: torch.Tensor  # (B, 1, Pv, Pu) int32: ALPHA_ONE - opacity [1 / ALPHA_ONE]
    ink: torch.Tensor  # (B, 3, Pv, Pu) int32: colour * opacity + ALPHA_ONE / 2 (to round)


@dataclass(frozen=True)
class _PatchGroup:
    """Cars drawn with patches of one size (see `BatchedBevCamera._layout`)."""

    cars: _Footprints  # sorted by env
    half_u: float  # [px] largest half extent of their covered areas along image columns
    half_v: float  # [px] ... along image rows
    first_cars: list[int]  # chunk i's cars are cars[first_cars[i]:first_cars[i + 1]]

    @property
    def patch_u(self) -> int:
        """[px] patch columns: every pixel within half_u of a centre (column-wise)."""
        return int(math.floor(2 * self.half_u)) + 1

    @property
    def patch_v(self) -> int:
        """[px] patch rows."""
        return int(math.floor(2 * self.half_v)) + 1


@dataclass(frozen=True)
class _Layout:
    """The Python numbers that shape one render (see `BatchedBevCamera._layout`)."""

    groups: list[_PatchGroup]  # the other vehicles, the non-empty groups only
    ego_half_u: float  # [px] largest half extents of the ego's covered area
    ego_half_v: float


@dataclass(frozen=True)
class _Footprints:
    """K vehicle footprints in image space; all fields (K,), lengths in pixels."""

    env: torch.Tensor  # int64, which frame each one is in
    centre_u: torch.Tensor
    centre_v: torch.Tensor
    fwd_u: torch.Tensor  # unit vector along the length
    fwd_v: torch.Tensor
    half_length: torch.Tensor
    half_width: torch.Tensor
    half_u: torch.Tensor  # half extent along image columns
    half_v: torch.Tensor  # half extent along image rows

    @property
    def count(self) -> int:
        return self.env.numel()

    def select(self, index: torch.Tensor) -> _Footprints:
        """The footprints at (J,) int64 `index`."""
        return _Footprints(**{field.name: getattr(self, field.name)[index] for field in fields(self)})


def _rectangle_coverage(du: torch.Tensor, dv: torch.Tensor, fwd_u, fwd_v, half_length, half_width,
                        out: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Approximate antialiased coverage of a rotated rectangle, in [0, 1].

    du, dv [px]: pixel centre minus rectangle centre (broadcastable); fwd_u, fwd_v: unit
    vector along its length in the image; half_length, half_width [px]. The signed distance
    to the nearest edge (positive inside) plus half a pixel, clamped, is the coverage of a
    pixel straddling one straight edge; corners come out slightly fuller than exact. The
    footprint is grown by AA_DILATION_PX, as cv2's antialiased fill does. `out`: two
    buffers of the broadcast shape to work in (the first one is returned).
    """
    buffer_a, buffer_b = out if out is not None else (None, None)
    along = torch.add(du * fwd_u, dv * fwd_v, out=buffer_a).abs_()  # [px] from the centre along the length
    across = torch.add(du * -fwd_v, dv * fwd_u, out=buffer_b).abs_()  # [px] ... along the width
    inside = torch.minimum(
        torch.sub(half_length, along, out=buffer_a), torch.sub(half_width, across, out=buffer_b), out=buffer_a,
    )  # signed distance to the nearest edge [px]
    return inside.add_(0.5 + AA_DILATION_PX).clamp_(0.0, 1.0)
