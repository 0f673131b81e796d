"""kembed-plan simulate: the model of Knative's KPA keeps count of every request and scales the way the
autoscaler's documented rules say (panic within its window, zero after the grace, the target at steady state)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferenceservices.planner.cli import main
from inferenceservices.planner.curve import Curve
from inferenceservices.planner.kpa import KpaSettings, simulate


def linear_curve(per_request_ms: float = 50.0, up_to: int = 64, cold_start_s: float = 1.0) -> Curve:
    """A pod whose latency does not grow with concurrency (throughput = concurrency / latency) up to `up_to`."""
    points = [{"concurrency": c, "throughput_rps": c * 1000 / per_request_ms, "p50_ms": per_request_ms,
               "p99_ms": per_request_ms * 1.2} for c in (1, 2, 4, 8, 16, 32, 64) if c <= up_to]
    return Curve.from_dict({"points": points, "cold_start_s": cold_start_s})


def first_second(result, predicate, after: float = 0.0) -> float:
    return next(row["t"] for row in result.timeline if row["t"] >= after and predicate(row))


def ready_at(result, t: int) -> int:
    """Ready pods at second t (rows exist only for seconds with events)."""
    rows = [row for row in result.timeline if row["t"] <= t]
    return rows[-1]["ready"] if rows else 0


@settings(max_examples=40, deadline=None)
@given(
    rates=st.lists(st.floats(0, 80), min_size=1, max_size=12),
    segment=st.integers(1, 20),
    cc=st.integers(0, 8),
    target=st.integers(1, 16),
    max_replicas=st.integers(0, 4),
    min_replicas=st.integers(0, 2),
    cold=st.floats(0.1, 20),
    timeout=st.floats(0.5, 30),
    burst=st.sampled_from([-1, 0, 211]),
    seed=st.integers(0, 1000),
)
def test_every_request_is_served_refused_or_timed_out(rates, segment, cc, target, max_replicas, min_replicas,
                                                      cold, timeout, burst, seed):
    trace = [(i * segment, rate) for i, rate in enumerate(rates)]
    knobs = KpaSettings(container_concurrency=cc, scale_target=target, min_replicas=min_replicas,
                        max_replicas=max(max_replicas, min_replicas) if max_replicas else 0, timeout_s=timeout,
                        target_burst_capacity=burst, scale_to_zero_grace_period_s=6, stable_window_s=12)
    result = simulate(linear_curve(up_to=8), knobs, trace, cold_start_s=cold, seed=seed)
    assert result.served + result.errors_503 + result.timeouts == result.requests
    assert sum(len(row["latencies"]) for row in result.timeline) == result.served
    assert sum(row["arrivals"] for row in result.timeline) == result.requests
    assert sum(row["failed"] for row in result.timeline) == result.errors_503 + result.timeouts
    assert 0 <= result.slo_misses <= result.served
    assert result.pod_seconds >= 0
    if knobs.max_replicas:
        assert result.peak_replicas <= knobs.max_replicas


def test_overload_is_refused_or_timed_out_and_still_counted():
    trace = [(0, 400.0), (20, 0.0)]
    # no activator once a pod is up: the queue-proxy holds 10 x containerConcurrency, then answers 503
    direct = simulate(linear_curve(), KpaSettings(container_concurrency=1, scale_target=1, max_replicas=1,
                                                  target_burst_capacity=0, initial_replicas=1), trace)
    assert direct.errors_503 > 0 and direct.served + direct.errors_503 + direct.timeouts == direct.requests
    # activator always in the path: requests wait there and pass the timeout
    buffered = simulate(linear_curve(), KpaSettings(container_concurrency=1, scale_target=1, max_replicas=1,
                                                    target_burst_capacity=-1, timeout_s=2), trace)
    assert buffered.timeouts > 0 and buffered.errors_503 == 0
    assert buffered.served + buffered.timeouts == buffered.requests


def step_trace() -> list[tuple[float, float]]:
    return [(0, 5.0), (60, 100.0), (120, 100.0)]


def test_a_step_scales_up_within_the_panic_window():
    # 100 req/s x 50 ms = 5 in flight; target 2 -> 3 pods. The 6 s panic window sees the step at once.
    knobs = KpaSettings(container_concurrency=8, scale_target=2, target_utilization_percentage=100,
                        initial_replicas=1)
    result = simulate(linear_curve(), knobs, step_trace(), poisson=False)
    reached = first_second(result, lambda row: row["desired"] >= 3, after=60)
    assert reached <= 60 + knobs.panic_window_s + knobs.tick_s
    assert any(row["panic"] for row in result.timeline if 60 <= row["t"] <= 70)
    # the same step without panic mode waits for the 60 s stable window to fill
    calm = simulate(linear_curve(), KpaSettings(**{**knobs.__dict__, "panic_threshold_percentage": 1e9}),
                    step_trace(), poisson=False)
    assert first_second(calm, lambda row: row["desired"] >= 3, after=60) > 60 + 20


@pytest.mark.parametrize(("grace", "retention"), [(30, 0), (30, 100), (60, 0)])
def test_an_idle_service_scales_to_zero_after_the_grace_period(grace, retention):
    trace = [(0, 5.0), (30, 0.0), (400, 0.0)]
    knobs = KpaSettings(scale_target=10, scale_to_zero_grace_period_s=grace,
                        scale_to_zero_pod_retention_s=retention)
    result = simulate(linear_curve(), knobs, trace, poisson=False)
    zero = first_second(result, lambda row: row["ready"] == 0 and row["desired"] == 0, after=31)
    # the stable window empties 60 s after the last request (~30 s), then the last pod lingers
    expected = 30 + knobs.stable_window_s + max(grace, retention)
    assert expected - knobs.tick_s <= zero <= expected + 2 * knobs.tick_s
    assert ready_at(result, int(expected - 2 * knobs.tick_s)) == 1
    assert result.cold_starts == 1  # woken once by the first request, never again


@pytest.mark.parametrize("load", [20.0, 50.0, 80.0])
def test_a_constant_load_settles_at_load_over_per_pod_capacity_at_the_target(load):
    curve = linear_curve(per_request_ms=200)
    knobs = KpaSettings(container_concurrency=16, scale_target=4, target_utilization_percentage=70)
    per_pod = curve.throughput(knobs.target_value)  # 2.8 in flight x 5 req/s each = 14 req/s
    result = simulate(curve, knobs, [(0, load), (239, load)], seed=1)
    settled = {ready_at(result, t) for t in range(160, 240, 4)}
    assert settled == {math.ceil(load / per_pod)}, settled


def test_a_longer_cold_start_misses_the_slo_more_often():
    # bursts after idle spells long enough to scale to zero in between
    trace = []
    for start in (0, 200, 400):
        trace += [(start, 0.0), (start + 10, 60.0), (start + 40, 0.0)]
    knobs = KpaSettings(scale_target=4, scale_to_zero_grace_period_s=30)
    quick = simulate(linear_curve(), knobs, trace, cold_start_s=0.3, slo_ms=500)
    slow = simulate(linear_curve(), knobs, trace, cold_start_s=10, slo_ms=500)
    assert quick.cold_starts >= 3 and slow.cold_starts >= 3
    assert slow.slo_misses > 2 * max(1, quick.slo_misses)
    assert slow.p99_ms > 500 > quick.p99_ms


def test_the_command_line_writes_json_and_a_picture(tmp_path, capsys):
    curve = tmp_path / "curve.json"
    curve.write_text('{"cold_start_s": 2, "points": [{"concurrency": 1, "throughput_rps": 20, "p50_ms": 50, '
                     '"p99_ms": 60}, {"concurrency": 8, "throughput_rps": 120, "p50_ms": 66, "p99_ms": 90}]}')
    trace = tmp_path / "trace.csv"
    trace.write_text("second,rps\n0,10\n30,80\n60,0\n150,0\n")
    png = tmp_path / "out.png"
    assert main(["simulate", "--curve", str(curve), "--trace", str(trace), "--png", str(png), "--json",
                 "--container-concurrency", "8", "--scale-target", "8", "--scale-to-zero-grace-period-s", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("p99_ms", "pod_seconds", "cold_starts", "peak_replicas", "errors_503", "timeouts", "slo_misses"):
        assert key in out
    assert out["settings"]["container_concurrency"] == 8 and out["requests"] == out["served"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    trace.write_text("second,rps\n0,10\n0,20\n")
    assert main(["simulate", "--curve", str(curve), "--trace", str(trace), "--png", ""]) == 2
    assert "seconds must increase" in capsys.readouterr().err
