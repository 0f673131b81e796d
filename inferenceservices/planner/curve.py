"""The capacity curve of one predictor pod: the file `measure` writes and `recommend` and `simulate` read.

Contract keys: `hardware`, `model`, `cold_start_s` and `points` (`concurrency`, `throughput_rps`, `p50_ms`,
`p99_ms`); anything else in the file is kept but not required.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POINT_KEYS = ("concurrency", "throughput_rps", "p50_ms", "p99_ms")


class CurveError(ValueError):
    """A curve file that cannot be planned from; the message names the point and the field."""


@dataclass(frozen=True)
class Point:
    concurrency: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Curve:
    points: tuple[Point, ...]
    cold_start_s: float | None = None
    hardware: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    texts_per_request: int = 1
    peak_rss_bytes: int | None = None
    measured_at: str | None = None
    command: str | None = None  # the measure command that wrote it

    @classmethod
    def from_dict(cls, data: Any) -> Curve:
        if not isinstance(data, dict):
            raise CurveError(f"a curve is a JSON object, got {type(data).__name__}")
        raw_points = data.get("points")
        if not isinstance(raw_points, list) or not raw_points:
            raise CurveError("`points` must be a non-empty list of {concurrency, throughput_rps, p50_ms, p99_ms}")
        points = [_point(index, raw) for index, raw in enumerate(raw_points)]
        for before, after in itertools.pairwise(points):
            if after.concurrency <= before.concurrency:
                raise CurveError(
                    f"points must be in increasing concurrency: {after.concurrency} follows {before.concurrency}"
                )
        cold_start = data.get("cold_start_s")
        if cold_start is not None and not _finite(cold_start, minimum=0):
            raise CurveError(f"`cold_start_s` must be a number >= 0 or null, got {cold_start!r}")
        texts = data.get("texts_per_request", 1)
        if not isinstance(texts, int) or isinstance(texts, bool) or texts < 1:
            raise CurveError(f"`texts_per_request` must be an integer >= 1, got {texts!r}")
        rss = data.get("peak_rss_bytes")
        if rss is not None and not (isinstance(rss, int) and rss > 0):
            raise CurveError(f"`peak_rss_bytes` must be a positive integer or null, got {rss!r}")
        hardware = data.get("hardware", {})
        if not isinstance(hardware, dict):
            raise CurveError("`hardware` must be an object")
        return cls(tuple(points), None if cold_start is None else float(cold_start), hardware,
                   data.get("model"), texts, rss, data.get("measured_at"),
                   data.get("command"))

    @classmethod
    def load(cls, path: str | Path) -> Curve:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CurveError(f"cannot read curve {path}: {exc}") from exc
        return cls.from_dict(data)

    def throughput(self, concurrency: float) -> float:
        """Requests/s of a pod holding `concurrency` requests: linear between measured points, through the
        origin below the first, flat past the last (a saturated pod does not get faster)."""
        if concurrency <= 0:
            return 0.0
        knots = [(0.0, 0.0)] + [(float(p.concurrency), p.throughput_rps) for p in self.points]
        for (x0, y0), (x1, y1) in itertools.pairwise(knots):
            if concurrency <= x1:
                return y0 + (y1 - y0) * (concurrency - x0) / (x1 - x0)
        return knots[-1][1]

    def concurrency_for(self, throughput_rps: float) -> float:
        """The least concurrency at which the pod reaches `throughput_rps` (inverse of the rising envelope)."""
        x0, y0 = 0.0, 0.0
        for point in self.points:
            x1, y1 = float(point.concurrency), point.throughput_rps
            if y1 > y0:
                if throughput_rps <= y1:
                    return x0 + (x1 - x0) * max(0.0, throughput_rps - y0) / (y1 - y0)
                x0, y0 = x1, y1
        return math.inf

    def work_spread(self) -> float:
        """Log-normal sigma of one request's cost, from p99/p50 at the lowest measured concurrency (where the
        spread is the texts' own, not queueing's)."""
        first = self.points[0]
        return min(1.5, max(0.0, math.log(first.p99_ms / first.p50_ms) / 2.326))


def _finite(value: Any, minimum: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= minimum


def _point(index: int, raw: Any) -> Point:
    if not isinstance(raw, dict):
        raise CurveError(f"points[{index}] must be an object, got {type(raw).__name__}")
    missing = [key for key in POINT_KEYS if key not in raw]
    if missing:
        raise CurveError(f"points[{index}] lacks {', '.join(missing)}")
    concurrency = raw["concurrency"]
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise CurveError(f"points[{index}].concurrency must be an integer >= 1, got {concurrency!r}")
    for key in POINT_KEYS[1:]:
        if not _finite(raw[key], minimum=0) or raw[key] <= 0:
            raise CurveError(f"points[{index}].{key} must be a finite number > 0, got {raw[key]!r}")
    if raw["p99_ms"] < raw["p50_ms"]:
        raise CurveError(f"points[{index}]: p99_ms ({raw['p99_ms']}) is below p50_ms ({raw['p50_ms']})")
    return Point(concurrency, float(raw["throughput_rps"]), float(raw["p50_ms"]), float(raw["p99_ms"]))
