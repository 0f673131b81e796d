"""`kembed-plan simulate`: a discrete-event model of Knative's KPA in front of predictor pods.

What is modelled, after knative/serving's pkg/autoscaler/scaling/autoscaler.go and pkg/reconciler/autoscaling/kpa
(docs/planning.md lists the simplifications):
- the metric: in-flight requests (in the pods, their queue-proxies and the activator), averaged per second;
  the stable value is the mean over the stable window, the panic value over panic-window-percentage of it;
- every tick (2 s): desired = ceil(value / (target x utilization)), kept within [floor(ready / max-scale-down-rate),
  ceil(max-scale-up-rate x ready)] (ready counts at least 1); panic starts when the panic desired count reaches
  panic-threshold-percentage of the ready pods, never scales down, and ends a stable window after the last tick
  over the threshold; scale-down-delay keeps the highest desired count of its window;
- scale to zero: desired 0 marks the revision inactive once it has been active a stable window (it holds one pod
  until then); the last pod goes when it has been inactive for max(scale-to-zero-grace-period, retention);
- the activator: with no ready pod, or when excess burst capacity (ready x target - target-burst-capacity -
  panic value) is negative, requests wait in the activator (up to 10000, then 503) and go to the least-loaded pod
  with a free slot; otherwise each request goes to a random ready pod, whose queue-proxy holds up to
  10 x containerConcurrency beyond the slots (then 503). The first request at zero wakes a pod at once;
- a pod: a cold start from the curve, then processor sharing among at most containerConcurrency requests, the
  whole pod serving at the curve's throughput for that many; request costs are log-normal with the spread of the
  curve's p99/p50 at its lowest concurrency; a request still waiting after the timeout is dropped as a timeout.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inferenceservices.planner.curve import Curve

ACTIVATOR_QUEUE_DEPTH = 10_000  # activator breakerQueueDepth
QUEUE_PROXY_DEPTH_FACTOR = 10  # queue-proxy: queue depth = 10 x containerConcurrency


@dataclass(frozen=True)
class KpaSettings:
    """Knative's knobs, defaults as in config-autoscaler (and the revision defaults)."""

    container_concurrency: int = 0  # 0 = unlimited
    scale_target: float = 100.0  # autoscaling.knative.dev/target (container-concurrency-target-default)
    target_utilization_percentage: float = 70.0
    min_replicas: int = 0
    max_replicas: int = 0  # 0 = unlimited
    stable_window_s: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_to_zero_grace_period_s: float = 30.0
    scale_to_zero_pod_retention_s: float = 0.0
    scale_down_delay_s: float = 0.0
    target_burst_capacity: float = 211.0  # -1: activator always in the path; 0: only at zero
    tick_s: float = 2.0
    timeout_s: float = 300.0  # revision timeoutSeconds
    initial_replicas: int | None = None  # ready at t=0; None = min_replicas

    @property
    def panic_window_s(self) -> float:
        return max(1.0, round(self.stable_window_s * self.panic_window_percentage / 100))

    @property
    def target_value(self) -> float:
        return self.scale_target * self.target_utilization_percentage / 100


@dataclass
class Request:
    arrival: float
    work: float  # in units of one average request


@dataclass
class Pod:
    created: float
    ready_at: float
    ready: bool = False
    draining: bool = False
    removed_at: float | None = None
    virtual: float = 0.0  # work each in-service request has received
    updated: float = 0.0
    version: int = 0
    in_service: list[tuple[float, int, Request]] = field(default_factory=list)
    queue: deque[Request] = field(default_factory=deque)

    @property
    def load(self) -> int:
        return len(self.in_service) + len(self.queue)


@dataclass
class Result:
    requests: int = 0
    served: int = 0
    errors_503: int = 0
    timeouts: int = 0
    slo_misses: int = 0
    cold_starts: int = 0
    requests_at_zero: int = 0
    pod_seconds: float = 0.0
    peak_replicas: int = 0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    mean_ms: float = math.nan
    seconds: float = 0.0
    timeline: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        failed = self.errors_503 + self.timeouts
        return {
            "requests": self.requests, "served": self.served, "errors_503": self.errors_503,
            "timeouts": self.timeouts, "slo_misses": self.slo_misses,
            "slo_miss_ratio": (self.slo_misses + failed) / self.requests if self.requests else 0.0,
            "p50_ms": _round(self.p50_ms), "p99_ms": _round(self.p99_ms), "mean_ms": _round(self.mean_ms),
            "cold_starts": self.cold_starts, "requests_at_zero": self.requests_at_zero,
            "pod_seconds": round(self.pod_seconds, 1), "peak_replicas": self.peak_replicas,
            "seconds": round(self.seconds, 1),
        }


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 1)


def arrivals(trace: list[tuple[float, float]], seed: int, poisson: bool = True) -> list[float]:
    """Arrival times for a `second,rps` trace: Poisson within each second, or evenly spaced."""
    rng = np.random.default_rng(seed)
    times: list[float] = []
    carry = 0.0
    for index, (start, rps) in enumerate(trace):
        end = trace[index + 1][0] if index + 1 < len(trace) else start + 1
        span = end - start
        if rps <= 0 or span <= 0:
            continue
        if poisson:
            count = int(rng.poisson(rps * span))
            times.extend(np.sort(rng.uniform(start, end, count)).tolist())
        else:
            gap = 1.0 / rps
            t = start + carry
            while t < end:
                times.append(t)
                t += gap
            carry = t - end
    return times


class Simulation:
    ARRIVE, DONE, READY, TICK = range(4)

    def __init__(self, curve: Curve, settings: KpaSettings, cold_start_s: float | None = None,
                 slo_ms: float = 500.0, seed: int = 0) -> None:
        self.curve, self.settings, self.slo_ms = curve, settings, slo_ms
        self.cold_start = curve.cold_start_s if cold_start_s is None else cold_start_s
        if self.cold_start is None:
            raise ValueError("the curve has no cold_start_s: pass --cold-start-s")
        self.rng = random.Random(seed)
        sigma = curve.work_spread()
        self.work = lambda: self.rng.lognormvariate(-sigma * sigma / 2, sigma)  # mean 1
        self.cc = settings.container_concurrency
        self._rates: dict[int, float] = {}
        self.events: list[tuple[float, int, int, Any]] = []
        self.seq = itertools.count()
        self.pods: list[Pod] = []  # not yet removed
        self.gone: list[Pod] = []
        self.activator: deque[Request] = deque()
        self.activator_in_path = True
        self.in_system = 0
        self.latencies: list[float] = []
        self.result = Result()
        # metric: per-second averages of in-flight requests
        self.buckets: list[float] = []
        self.area = 0.0
        self.metric_t = 0.0
        # autoscaler state
        self.panic_since: float | None = None
        self.max_panic_pods = 0
        self.delay_window: deque[tuple[float, int]] = deque()
        self.active = False
        self.active_since = 0.0
        self.inactive_since = 0.0
        self.desired = 0
        self.second: dict[int, dict[str, Any]] = {}

    # --- events -------------------------------------------------------------------------------------------

    def push(self, t: float, kind: int, payload: Any = None) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, payload))

    def run(self, arrival_times: list[float], duration: float) -> Result:
        s = self.settings
        start = s.min_replicas if s.initial_replicas is None else s.initial_replicas
        for _ in range(start):
            pod = Pod(created=0.0, ready_at=0.0, ready=True)
            self.pods.append(pod)
        if start:
            self.active, self.desired = True, start
        self.result.peak_replicas = start
        for t in arrival_times:
            self.push(t, self.ARRIVE)
        self.push(s.tick_s, self.TICK)
        now = 0.0
        while self.events:
            now, _, kind, payload = heapq.heappop(self.events)
            self._metric(now)
            if kind == self.ARRIVE:
                self._arrive(now)
            elif kind == self.DONE:
                self._done(now, *payload)
            elif kind == self.READY:
                self._ready(now, payload)
            else:
                self._tick(now)
                if now + s.tick_s <= duration or self.in_system:  # past the trace, tick until everything is done
                    self.push(now + s.tick_s, self.TICK)
        end = max(duration, now)
        self._metric(end)
        r = self.result
        r.requests = len(arrival_times)
        r.seconds = end
        lifetimes = ((p.removed_at if p.removed_at is not None else end) - p.created for p in self.pods + self.gone)
        r.pod_seconds = sum(lifetimes)
        if self.latencies:
            values = np.array(self.latencies) * 1000
            r.p50_ms, r.p99_ms = float(np.percentile(values, 50)), float(np.percentile(values, 99))
            r.mean_ms = float(values.mean())
        r.timeline = [self.second[k] for k in sorted(self.second)]
        return r

    def _row(self, t: float) -> dict[str, Any]:
        key = int(t)
        if key not in self.second:
            self.second[key] = {"t": key, "arrivals": 0, "latencies": [], "failed": 0,
                                "ready": self._ready_count(), "desired": self.desired, "panic": 0}
        return self.second[key]

    # --- the metric -----------------------------------------------------------------------------------------

    def _metric(self, t: float) -> None:
        """Accumulates in-flight request-seconds up to `t`, closing one-second buckets on the way."""
        while t >= len(self.buckets) + 1:
            boundary = len(self.buckets) + 1
            self.area += self.in_system * (boundary - self.metric_t)
            self.buckets.append(self.area)
            self.area, self.metric_t = 0.0, float(boundary)
        self.area += self.in_system * (t - self.metric_t)
        self.metric_t = t

    def _window_average(self, seconds: float) -> float:
        n = int(seconds)
        recent = self.buckets[-n:]
        return sum(recent) / len(recent) if recent else 0.0

    # --- requests -------------------------------------------------------------------------------------------

    def _ready_pods(self) -> list[Pod]:
        return [p for p in self.pods if p.ready and not p.draining and p.removed_at is None]

    def _ready_count(self) -> int:
        return len(self._ready_pods())

    def _has_slot(self, pod: Pod) -> bool:
        return self.cc <= 0 or len(pod.in_service) < self.cc

    def _arrive(self, now: float) -> None:
        request = Request(arrival=now, work=self.work())
        row = self._row(now)
        row["arrivals"] += 1
        ready = self._ready_pods()
        if not ready:
            self.result.requests_at_zero += 1
            if not any(p.removed_at is None and not p.draining for p in self.pods):
                self._scale_to(now, max(1, self.desired), poke=True)  # the activator wakes the revision
        if not ready or self.activator_in_path:
            if ready and not self.activator:
                free = [p for p in ready if self._has_slot(p)]
                if free:
                    self._start(now, min(free, key=lambda p: p.load), request)
                    return
            if len(self.activator) >= ACTIVATOR_QUEUE_DEPTH:
                self._fail(now, request, timeout=False)
                return
            self.activator.append(request)
            self.in_system += 1
            return
        pod = self.rng.choice(ready)
        if self._has_slot(pod):
            self._start(now, pod, request)
        elif len(pod.queue) < QUEUE_PROXY_DEPTH_FACTOR * self.cc:
            pod.queue.append(request)
            self.in_system += 1
        else:
            self._fail(now, request, timeout=False)

    def _fail(self, now: float, request: Request, timeout: bool) -> None:
        if timeout:
            self.result.timeouts += 1
        else:
            self.result.errors_503 += 1
        self._row(request.arrival)["failed"] += 1

    def _throughput(self, n: int) -> float:
        rate = self._rates.get(n)
        if rate is None:
            rate = self._rates[n] = self.curve.throughput(n)
        return rate

    def _advance(self, pod: Pod, now: float) -> None:
        n = len(pod.in_service)
        if n:
            pod.virtual += (now - pod.updated) * self._throughput(n) / n
        pod.updated = now

    def _schedule(self, pod: Pod, now: float) -> None:
        pod.version += 1
        n = len(pod.in_service)
        if n:
            remaining = max(0.0, pod.in_service[0][0] - pod.virtual)
            self.push(now + remaining * n / self._throughput(n), self.DONE, (pod, pod.version))

    def _start(self, now: float, pod: Pod, request: Request, queued: bool = False) -> None:
        self._advance(pod, now)
        heapq.heappush(pod.in_service, (pod.virtual + request.work, next(self.seq), request))
        if not queued:
            self.in_system += 1
        self._schedule(pod, now)

    def _done(self, now: float, pod: Pod, version: int) -> None:
        if version != pod.version:
            return
        self._advance(pod, now)
        _, _, request = heapq.heappop(pod.in_service)
        self.in_system -= 1
        latency = now - request.arrival
        if latency > self.settings.timeout_s:
            self._fail(now, request, timeout=True)
        else:
            self.result.served += 1
            self.latencies.append(latency)
            self._row(request.arrival)["latencies"].append(latency * 1000)
            if latency * 1000 > self.slo_ms:
                self.result.slo_misses += 1
        self._schedule(pod, now)
        self._feed(now, pod)
        if pod.draining and not pod.in_service and not pod.queue:
            self._remove(pod, now)

    def _next_waiting(self, now: float, source: deque[Request]) -> Request | None:
        """The oldest request that has not timed out (those that have are counted and dropped)."""
        while source:
            request = source.popleft()
            if now - request.arrival <= self.settings.timeout_s:
                return request
            self.in_system -= 1
            self._fail(now, request, timeout=True)
        return None

    def _feed(self, now: float, pod: Pod) -> None:
        """Fills `pod`'s free slots: its own queue-proxy queue first, then the activator's."""
        while self._has_slot(pod):
            request = self._next_waiting(now, pod.queue)
            if request is None and pod.ready and not pod.draining:
                request = self._next_waiting(now, self.activator)
            if request is None:
                return
            self._start(now, pod, request, queued=True)

    def _ready(self, now: float, pod: Pod) -> None:
        if pod.removed_at is not None:
            return
        pod.ready = True
        pod.updated = now
        self._feed(now, pod)

    # --- the autoscaler -------------------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        s = self.settings
        stable = self._window_average(s.stable_window_s)
        panic = self._window_average(s.panic_window_s)
        ready = self._ready_count()
        ready_for_rates = max(1, ready)
        max_up = math.ceil(s.max_scale_up_rate * ready_for_rates)
        max_down = math.floor(ready_for_rates / s.max_scale_down_rate)
        dspc = math.ceil(stable / s.target_value - 1e-9)
        dppc = math.ceil(panic / s.target_value - 1e-9)
        desired_stable = min(max(dspc, max_down), max_up)
        desired_panic = min(max(dppc, max_down), max_up)
        over = dppc / ready_for_rates >= s.panic_threshold_percentage / 100
        if over:
            self.panic_since = now
        elif self.panic_since is not None and self.panic_since + s.stable_window_s < now:
            self.panic_since, self.max_panic_pods = None, 0
        desired = desired_stable
        if self.panic_since is not None:
            desired = max(desired, desired_panic, self.max_panic_pods)
            self.max_panic_pods = desired
        if s.scale_down_delay_s > 0:
            self.delay_window.append((now, desired))
            while self.delay_window[0][0] <= now - s.scale_down_delay_s:
                self.delay_window.popleft()
            desired = max(count for _, count in self.delay_window)
        # the PodAutoscaler reconciler: bounds, then the scale-to-zero rules
        if s.max_replicas > 0:
            desired = min(desired, s.max_replicas)
        desired = max(desired, s.min_replicas)
        current = self._live_count()
        if desired == 0 and current > 0:
            if self.active:
                if now - self.active_since >= s.stable_window_s:
                    self.active, self.inactive_since = False, now
                    desired = current  # inactive now; the pods stay until the grace/retention ends
                else:
                    desired = 1
            else:
                linger = max(s.scale_to_zero_grace_period_s, s.scale_to_zero_pod_retention_s)
                desired = 0 if now - self.inactive_since >= linger else current
        elif desired > 0 and not self.active:
            self.active, self.active_since = True, now
        excess_burst_capacity = math.floor(ready * s.scale_target - s.target_burst_capacity - panic)
        self.activator_in_path = (ready == 0 or s.target_burst_capacity < 0
                                  or (s.target_burst_capacity > 0 and excess_burst_capacity < 0))
        self._scale_to(now, desired)
        row = self._row(now)
        row["panic"] = int(self.panic_since is not None)

    def _remove(self, pod: Pod, now: float) -> None:
        pod.removed_at = now
        self.pods.remove(pod)
        self.gone.append(pod)

    def _live_count(self) -> int:
        return sum(1 for p in self.pods if p.removed_at is None and not p.draining)

    def _scale_to(self, now: float, desired: int, poke: bool = False) -> None:
        if poke and not self.active:
            self.active, self.active_since = True, now
        self.desired = desired
        live = [p for p in self.pods if p.removed_at is None and not p.draining]
        for _ in range(desired - len(live)):
            pod = Pod(created=now, ready_at=now + self.cold_start, updated=now)
            self.pods.append(pod)
            self.result.cold_starts += 1
            self.push(pod.ready_at, self.READY, pod)
        if desired < len(live):
            # starting pods go first, then the least loaded ready ones, which finish what they hold
            victims = sorted(live, key=lambda p: (p.ready, p.load))[: len(live) - desired]
            for pod in victims:
                pod.draining = True
                if not pod.ready or (not pod.in_service and not pod.queue):
                    self._remove(pod, now)
        replicas = self._live_count()
        self.result.peak_replicas = max(self.result.peak_replicas, replicas)
        row = self._row(now)
        row["ready"], row["desired"] = self._ready_count(), desired


def simulate(curve: Curve, settings: KpaSettings, trace: list[tuple[float, float]], *,
             cold_start_s: float | None = None, slo_ms: float = 500.0, seed: int = 0,
             poisson: bool = True) -> Result:
    duration = (trace[-1][0] + 1) if trace else 0.0
    return Simulation(curve, settings, cold_start_s, slo_ms, seed).run(arrivals(trace, seed, poisson), duration)
