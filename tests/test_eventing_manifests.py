"""eventing/config: validated against the official CRD schemas (tests/crds/, see its README) and
cross-checked with the service's own flags. The Kubernetes API cannot run here, so the schemas stand in
for it; SinkBinding's CRD is not among them and is checked structurally."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from eventing.settings import REQUEST_TYPE, Settings, build_parser
from tests.crd_schemas import CRD_FILES, schema_errors
from tests.knative import backoff_schedule, iso_seconds

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "eventing" / "config"
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"


def load(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((CONFIG / name).read_text()) if doc]


@cache
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((CONFIG / "kustomization.yaml").read_text())


def resources() -> list[dict[str, Any]]:
    return [doc for name in kustomization()["resources"] for doc in load(name)]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for doc in resources() if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# SinkBinding's CRD is not vendored in tests/crds: test_sinkbinding_shape checks it structurally.
WITH_CRD = [doc for doc in resources() if (doc["apiVersion"], doc["kind"]) != ("sources.knative.dev/v1", "SinkBinding")]


@pytest.mark.parametrize("doc", WITH_CRD, ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}")
def test_resources_validate_against_their_crd(doc):
    key = (doc["apiVersion"], doc["kind"])
    assert key in CRD_FILES, f"no schema for {key}"
    assert schema_errors(doc) == []


def test_a_misspelt_field_is_caught_by_the_validation():
    trigger = one("Trigger")
    broken = {**trigger, "spec": {**trigger["spec"], "delivery": {**trigger["spec"]["delivery"], "backoffpolicy": "x"}}}
    assert any("backoffpolicy" in error for error in schema_errors(broken))


def test_trigger_filters_the_request_type_and_retries_with_exponential_backoff_to_a_dead_letter_sink():
    trigger, broker = one("Trigger"), one("Broker")
    assert trigger["spec"]["broker"] == broker["metadata"]["name"]
    assert trigger["spec"]["filter"]["attributes"] == {"type": REQUEST_TYPE}
    delivery = trigger["spec"]["delivery"]
    assert delivery["retry"] >= 3
    assert delivery["backoffPolicy"] == "exponential"
    assert delivery["backoffDelay"].startswith("PT")
    subscriber, dead_letter = trigger["spec"]["subscriber"]["ref"], delivery["deadLetterSink"]["ref"]
    for ref in (subscriber, dead_letter):
        assert (ref["apiVersion"], ref["kind"]) == ("serving.knative.dev/v1", "Service")
        one("Service", ref["name"])  # the referenced Service is part of the kustomization
    assert subscriber["name"] != dead_letter["name"]


def container(service: dict[str, Any]) -> dict[str, Any]:
    (only,) = service["spec"]["template"]["spec"]["containers"]
    return only


def test_service_runs_the_eventing_entry_point_with_known_knobs():
    handler = container(one("Service", one("Trigger")["spec"]["subscriber"]["ref"]["name"]))
    assert handler["command"] == ["kembed-eventing"]
    assert handler["image"] == "ghcr.io/kembed/kembed:0.1.0"
    env = {item["name"]: item["value"] for item in handler["env"]}
    assert "PORT" not in env and "K_SINK" not in env  # set by Knative and by the SinkBinding
    flags = {action.dest for action in build_parser()._actions}
    knobs = {name.removeprefix("KEMBED_").lower() for name in env if name.startswith("KEMBED_")}
    assert knobs <= flags, f"unknown KEMBED_* variables: {sorted(knobs - flags)}"
    assert env["KEMBED_REQUEST_TYPE"] == one("Trigger")["spec"]["filter"]["attributes"]["type"]
    assert env["KEMBED_INFERENCE_URL"].startswith("http")
    assert handler["readinessProbe"]["httpGet"]["path"] == "/healthz"
    security = handler["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"] and security["runAsUser"] == 1000


def test_the_dedup_store_covers_the_triggers_retry_schedule_within_the_pods_memory():
    """Knative's schedule (tests/knative.py): a redelivery after any attempt finds the event's stored reply
    or finished chunks, even counting the TTL from the first attempt; the store fits in the pod."""
    delivery = one("Trigger")["spec"]["delivery"]
    schedule = backoff_schedule(delivery["retry"], delivery["backoffPolicy"], iso_seconds(delivery["backoffDelay"]))
    assert schedule == [1, 2, 4, 8, 16, 32]  # what the Trigger's comment says
    service = one("Service", one("Trigger")["spec"]["subscriber"]["ref"]["name"])
    handler = container(service)
    env = {item["name"]: item["value"] for item in handler["env"]}
    ttl = float(env["KEMBED_DEDUP_TTL_SECONDS"])
    assert ttl >= 5 * sum(schedule)
    # The TTL also outlasts the service's own retries of one call ...
    attempts, backoff = int(env["KEMBED_CALL_ATTEMPTS"]), Settings.call_backoff_seconds
    timeout = float(env["KEMBED_REQUEST_TIMEOUT_SECONDS"])
    assert ttl > attempts * timeout + sum(backoff * 2**n for n in range(attempts - 1))
    # ... and the stored bytes stay within half the container's memory limit.
    assert int(env["KEMBED_DEDUP_MAX_BYTES"]) <= quantity_bytes(handler["resources"]["limits"]["memory"]) // 2
    assert int(env["KEMBED_DEDUP_MAX_BYTES"]) >= 64 * int(env["KEMBED_MAX_EVENT_BYTES"])


def quantity_bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity.removesuffix(suffix)) * factor
    return int(quantity)


def test_the_inference_url_is_the_transformers_knative_address():
    """<isvc>-transformer.<namespace>.svc.cluster.local: served by Knative on Kourier and Istio alike."""
    isvc = yaml.safe_load((ROOT / "inferenceservices" / "base" / "inferenceservice.yaml").read_text())
    namespace = kustomization()["namespace"]
    env = {item["name"]: item["value"] for item in container(one("Service", "kembed-eventing"))["env"]}
    assert "transformer" in isvc["spec"]
    assert env["KEMBED_INFERENCE_URL"] == f"http://{isvc['metadata']['name']}-transformer.{namespace}.svc.cluster.local"


def test_the_eventing_service_is_scraped_and_alerted_on():
    monitor, rule = one("PodMonitor"), one("PrometheusRule")
    service = one("Service", "kembed-eventing")
    assert monitor["spec"]["selector"]["matchLabels"] == {"serving.knative.dev/service": service["metadata"]["name"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["portNumber"] == container(service)["ports"][0]["containerPort"] and endpoint["path"] == "/metrics"
    for obj in (monitor, rule):
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = {r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]}
    assert {"KembedEventingFailing", "KembedEventsDeadLettered", "KembedEventingMetricsAbsent"} <= alerts


def test_sinkbinding_shape():
    """Structural check (no CRD here): sources.knative.dev/v1 SinkBinding whose subject is the handler
    Service and whose sink is the Broker, so split results flow back into it."""
    binding = one("SinkBinding")
    assert binding["apiVersion"] == "sources.knative.dev/v1"
    spec = binding["spec"]
    assert set(spec) <= {"subject", "sink", "ceOverrides"}
    subject = spec["subject"]
    assert set(subject) <= {"apiVersion", "kind", "name", "namespace", "selector"}
    assert (subject["apiVersion"], subject["kind"]) == ("serving.knative.dev/v1", "Service")
    assert subject["name"] == one("Trigger")["spec"]["subscriber"]["ref"]["name"]
    sink = spec["sink"]
    assert set(sink) <= {"ref", "uri", "CACerts", "audience"}
    assert set(sink["ref"]) <= {"apiVersion", "kind", "name", "namespace"}
    assert (sink["ref"]["apiVersion"], sink["ref"]["kind"]) == ("eventing.knative.dev/v1", "Broker")
    assert sink["ref"]["name"] == one("Broker")["metadata"]["name"]
    extensions = spec.get("ceOverrides", {}).get("extensions", {})
    assert all(name.isalnum() and name.islower() for name in extensions)  # CloudEvents extension naming
    assert all(isinstance(value, str) for value in extensions.values())


def test_kustomize_renders_everything_into_one_namespace():
    if not KUBECTL.exists():
        pytest.skip(f"{KUBECTL.relative_to(ROOT)} is missing: run scripts/fetch-kubectl.sh (make tools)")
    rendered = subprocess.run(
        [str(KUBECTL), "kustomize", str(CONFIG)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert sorted((doc["kind"], doc["metadata"]["name"]) for doc in docs) == sorted(
        (doc["kind"], doc["metadata"]["name"]) for doc in resources()
    )
    namespace = kustomization()["namespace"]
    for doc in docs:
        assert doc["metadata"]["namespace"] == namespace
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kembed"
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_FILES:
            assert schema_errors(doc) == []


def test_no_stray_files_in_config():
    listed = set(kustomization()["resources"]) | {"kustomization.yaml"}
    assert {path.name for path in CONFIG.iterdir()} == listed
