"""In-process stand-ins for the two services kembed-rollout talks to: KServe (behind the Kubernetes API) and
Prometheus. They model the behaviour the tool depends on, from the projects' own source:

- `KServe`: the API server plus KServe's controller for one InferenceService. A spec change bumps
  `metadata.generation` and `resourceVersion`; JSON-patch `test` ops are evaluated (a failed one gets the
  API server's generic 422, `testing value <path> failed: test failed`, k8s.io/apiserver patch.go); each GET
  is one reconcile observation: first the old status (the controller has not seen the change), then the new
  revision created but not ready (traffic still on the ready one, Knative resolves `latestRevision` to the
  latest *ready* revision), then ready with KServe's traffic split (ksvc_reconciler.go) and rolled-out
  bookkeeping (`PropagateStatus`). `status.observedGeneration` is the generation of the Knative Service
  reconciled last, the transformer's, as KServe copies it.
- `Prometheus`: holds series with per-second rates and evaluates the PromQL subset the guard uses
  (sum [by], rate, increase, histogram_quantile, `/`, label matchers = != =~ !~). A selector that matches
  nothing gives an empty vector, so a query with a wrong label finds no data; anything else is a 400.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import jsonpointer

Reply = tuple[int, Any]
POD_TEMPLATE_FIELDS = ("containers", "volumes", "nodeSelector", "tolerations", "serviceAccountName", "annotations")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def status_error(code: int, reason: str, message: str) -> Reply:
    return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code,
                  "message": message, "details": {"name": "kembed"}}


@dataclass
class Component:
    generation: int = 1          # of the component's Knative Service
    steps: int = -1              # reconcile observations since the last change; -1: settled
    new_revision: bool = False
    revisions: int = 1


@dataclass
class KServe:
    isvc: dict[str, Any]
    path: str
    never_ready: set[str] = field(default_factory=set)   # revisions that never become ready
    components: dict[str, Component] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("predictor", "transformer"):
            state = self.isvc["status"]["components"][name]
            self.components[name] = Component(revisions=int(state["latestCreatedRevision"].rsplit("-", 1)[1]))
        self.isvc["status"]["observedGeneration"] = self.components["transformer"].generation

    def respond(self, request: Any) -> Reply:
        if request.path != self.path:
            return status_error(404, "NotFound", "not found")
        if request.method == "GET":
            self.reconcile()
            return 200, copy.deepcopy(self.isvc)
        if request.method == "PATCH":
            return self.patch(request)
        return status_error(405, "MethodNotAllowed", request.method)

    def patch(self, request: Any) -> Reply:
        before = copy.deepcopy(self.isvc)
        try:
            if request.content_type == "application/json-patch+json":
                after = jsonpatch.apply_patch(before, request.body)
            elif request.content_type == "application/merge-patch+json":
                after = merge_patch(before, request.body)
            else:
                return status_error(415, "UnsupportedMediaType", request.content_type)
        except jsonpatch.JsonPatchTestFailed:
            # k8s.io/apiserver's applyJSPatch answers any failed op, a `test` too, with a generic 422.
            failed = next(op["path"] for op in request.body if op.get("op") == "test"
                          and jsonpointer.resolve_pointer(before, op["path"], None) != op.get("value"))
            return status_error(422, "Invalid", f"testing value {failed} failed: test failed")
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            return status_error(422, "Invalid", str(exc))
        if after["spec"] != before["spec"]:
            after["metadata"]["generation"] += 1
            for name, component in self.components.items():
                old, new = before["spec"].get(name, {}), after["spec"].get(name, {})
                if old != new:
                    component.steps = 0
                    component.new_revision = component.new_revision or any(
                        old.get(key) != new.get(key) for key in POD_TEMPLATE_FIELDS)
        after["metadata"]["resourceVersion"] = str(int(before["metadata"]["resourceVersion"]) + 1)
        self.isvc = after
        return 200, copy.deepcopy(after)

    def reconcile(self) -> None:
        for name, component in self.components.items():
            if component.steps < 0:
                continue
            component.steps += 1
            state = self.isvc["status"]["components"][name]
            if component.steps == 1:        # the controller has not seen the change yet
                continue
            if component.steps == 2:        # the Knative Service is updated; a new revision is created
                component.generation += 1
                if component.new_revision:
                    component.revisions += 1
                    state["latestCreatedRevision"] = f"kembed-{name}-{component.revisions:05d}"
                    self.condition(f"{name.capitalize()}Ready", "Unknown", "RevisionMissing",
                                   f"Configuration \"kembed-{name}\" is waiting for a Revision to become ready.")
                    self.condition("Ready", "Unknown", "RevisionMissing", "")
                    continue
            if state["latestCreatedRevision"] in self.never_ready:
                self.condition(f"{name.capitalize()}Ready", "False", "RevisionFailed",
                               f"Revision \"{state['latestCreatedRevision']}\" failed with message: "
                               "Container failed with: back-off restarting failed container.")
                self.condition("Ready", "False", "RevisionFailed", "")
                continue
            state["latestReadyRevision"] = state["latestCreatedRevision"]
            self.route(name, state)
            self.condition(f"{name.capitalize()}Ready", "True")
            self.condition("Ready", "True")
            component.steps, component.new_revision = -1, False
        self.isvc["status"]["observedGeneration"] = self.components["transformer"].generation

    def route(self, name: str, state: dict[str, Any]) -> None:
        """KServe's traffic targets for the spec, then PropagateStatus' rolled-out bookkeeping."""
        spec = self.isvc["spec"][name]
        tags = self.isvc["metadata"].get("annotations", {}).get("serving.kserve.io/enable-tag-routing") == "true"
        percent, rolled_out = spec.get("canaryTrafficPercent"), state.get("latestRolledoutRevision", "")
        latest = {"latestRevision": True, "revisionName": state["latestReadyRevision"]}
        if tags:
            latest["tag"] = "latest"
        if percent is not None and rolled_out:
            traffic = [{**latest, "percent": percent}]
            if percent < 100:
                traffic.append({"latestRevision": False, "percent": 100 - percent, "revisionName": rolled_out,
                                "tag": "prev"})
        else:
            traffic = [{**latest, "percent": 100}]
        state["traffic"] = traffic
        if traffic[0]["percent"] == 100 and rolled_out != state["latestReadyRevision"]:
            state["previousRolledoutRevision"] = rolled_out
            state["latestRolledoutRevision"] = state["latestReadyRevision"]

    def condition(self, kind: str, status: str, reason: str = "", message: str = "") -> None:
        conditions = self.isvc["status"]["conditions"]
        found = {"type": kind, "status": status, "lastTransitionTime": "2026-11-25T10:02:13Z"}
        if reason:
            found["reason"] = reason
        if message:
            found["message"] = message
        for index, item in enumerate(conditions):
            if item["type"] == kind:
                conditions[index] = found
                return
        conditions.append(found)


# --- Prometheus ---------------------------------------------------------------------------------------


class PromQLError(ValueError):
    pass


Vector = dict[frozenset, float]
TOKEN = re.compile(r'\s*(?:(?P<num>\d+(?:\.\d+)?(?:e-?\d+)?)|(?P<name>[a-zA-Z_:][\w:]*)|(?P<str>"(?:[^"\\]|\\.)*")'
                   r"|(?P<range>\[\d+[smh]\])|(?P<op>=~|!~|!=|[=(){},/]))")
SECONDS = {"s": 1, "m": 60, "h": 3600}


def tokens(query: str) -> list[tuple[str, str]]:
    found, position = [], 0
    while position < len(query.rstrip()):
        match = TOKEN.match(query, position)
        if not match:
            raise PromQLError(f"cannot parse at {query[position:position + 20]!r}")
        found.append((match.lastgroup, match[match.lastgroup]))
        position = match.end()
    return found


@dataclass
class Prometheus:
    """Series are (labels with __name__, per-second rate); `increase` is rate x range."""

    series: list[tuple[dict[str, str], float]] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)

    def add(self, name: str, rate: float, **labels: str) -> None:
        self.series.append(({"__name__": name, **labels}, rate))

    def respond(self, request: Any) -> Reply:
        if request.path != "/api/v1/query":
            return 404, "404 page not found\n"
        query = request.query["query"]
        self.queries.append(query)
        try:
            vector = self.evaluate(query)
        except PromQLError as exc:
            return 400, {"status": "error", "errorType": "bad_data", "error": str(exc)}
        result = [{"metric": dict(key), "value": [1764064800.0, format_value(value)]} for key, value in vector.items()]
        return 200, {"status": "success", "data": {"resultType": "vector", "result": result}}

    def evaluate(self, query: str) -> Vector:
        self._tokens, self._at = tokens(query), 0
        vector = self._expression()
        if self._at != len(self._tokens):
            raise PromQLError(f"unexpected {self._tokens[self._at][1]!r}")
        return vector

    # recursive descent over: expr := term ('/' term)*; term := call | sum | number
    def _peek(self) -> str | None:
        return self._tokens[self._at][1] if self._at < len(self._tokens) else None

    def _take(self, expected: str | None = None) -> str:
        if self._at >= len(self._tokens):
            raise PromQLError("unexpected end of query")
        text = self._tokens[self._at][1]
        if expected is not None and text != expected:
            raise PromQLError(f"expected {expected!r}, got {text!r}")
        self._at += 1
        return text

    def _expression(self) -> Vector:
        left = self._term()
        while self._peek() == "/":
            self._take("/")
            right = self._term()
            left = {key: divide(value, right[key]) for key, value in left.items() if key in right}
        return left

    def _term(self) -> Vector:
        word = self._take()
        if word == "sum":
            by = self._labels() if self._peek() == "by" else None
            self._take("(")
            inner = self._expression()
            self._take(")")
            groups: Vector = {}
            for key, value in inner.items():
                group = frozenset((k, v) for k, v in key if by is not None and k in by)
                groups[group] = groups.get(group, 0.0) + value
            return groups
        if word in ("rate", "increase"):
            self._take("(")
            selected = self._selector()
            kind, text = self._tokens[self._at]
            if kind != "range":
                raise PromQLError(f"{word}() needs a range vector")
            self._at += 1
            self._take(")")
            seconds = int(text[1:-2]) * SECONDS[text[-2]]
            return {key: rate * (seconds if word == "increase" else 1) for key, rate in selected.items()}
        if word == "histogram_quantile":
            self._take("(")
            quantile = float(self._take())
            self._take(",")
            buckets = self._expression()
            self._take(")")
            return histogram_quantile(quantile, buckets)
        raise PromQLError(f"unsupported {word!r}")

    def _labels(self) -> set[str]:
        self._take("by")
        self._take("(")
        names = set()
        while self._peek() != ")":
            names.add(self._take())
            if self._peek() == ",":
                self._take(",")
        self._take(")")
        return names

    def _selector(self) -> Vector:
        name = self._take()
        matchers = []
        if self._peek() == "{":
            self._take("{")
            while self._peek() != "}":
                label, op, value = self._take(), self._take(), self._take()
                matchers.append((label, op, value[1:-1].encode().decode("unicode_escape")))
                if self._peek() == ",":
                    self._take(",")
            self._take("}")
        found: Vector = {}
        for labels, rate in self.series:
            if labels["__name__"] == name and all(matches(labels.get(label, ""), op, v) for label, op, v in matchers):
                key = frozenset((k, v) for k, v in labels.items() if k != "__name__")
                found[key] = found.get(key, 0.0) + rate
        return found


def matches(value: str, op: str, wanted: str) -> bool:
    if op == "=":
        return value == wanted
    if op == "!=":
        return value != wanted
    hit = re.fullmatch(wanted, value) is not None
    return hit if op == "=~" else not hit


def divide(left: float, right: float) -> float:
    if right == 0:
        return math.nan if left == 0 else math.copysign(math.inf, left)
    return left / right


def histogram_quantile(quantile: float, buckets: Vector) -> Vector:
    """Prometheus' interpolation inside the bucket that holds the rank (promql/quantile.go)."""
    groups: dict[frozenset, list[tuple[float, float]]] = {}
    for key, count in buckets.items():
        labels = dict(key)
        upper = float(labels.pop("le"))
        groups.setdefault(frozenset(labels.items()), []).append((upper, count))
    result: Vector = {}
    for key, rows in groups.items():
        rows.sort()
        total = rows[-1][1]
        if total == 0:
            result[key] = math.nan
            continue
        rank, lower, below = quantile * total, 0.0, 0.0
        for upper, count in rows:
            if count >= rank:
                result[key] = lower if math.isinf(upper) else lower + (upper - lower) * (rank - below) / (count - below)
                break
            lower, below = upper, count
    return result


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
