"""kembed-rollout against in-process stand-ins for the Kubernetes API and Prometheus.

There is no Kubernetes cluster (and no Prometheus) on this machine, so the tool talks to tiny HTTP servers on
127.0.0.1 that record every request, so the tests can assert the exact patches the real `kubernetes` client
sends. Behind them: fixed answers (realistic InferenceService objects, Status errors, the plain-text 404 of an
unknown resource type), or the stand-ins of tests/standins.py, which model what KServe's controller writes
and evaluate the guard's PromQL over labelled series. The tool itself runs unchanged: real kubeconfig
loading, real HTTP, real client serialisation.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml

from inferenceservices.__main__ import main
from kembed.launch import ROOT, free_port
from tests.http_threads import serving
from tests.standins import KServe, Prometheus

ISVC_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/kembed/inferenceservices/kembed"
TOKEN = "stand-in-token"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    authorization: str | None
    body: Any


Reply = tuple[int, Any]  # status, JSON-able body (or str for text/plain)


@dataclass
class StandIn:
    """A recording HTTP server whose answers come from `respond`."""

    respond: Callable[[Request], Reply]
    requests: list[Request] = field(default_factory=list)
    url: str = ""

    def of(self, method: str) -> list[Request]:
        return [request for request in self.requests if request.method == method]


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[Request], Reply]], StandIn]]:
    servers = ExitStack()

    def start(respond: Callable[[Request], Reply]) -> StandIn:
        stand_in = StandIn(respond)

        class Handler(BaseHTTPRequestHandler):
            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                request = Request(
                    self.command, url.path, dict(parse_qsl(url.query)), self.headers.get("Content-Type"),
                    self.headers.get("Authorization"), json.loads(raw) if raw else None,
                )
                stand_in.requests.append(request)
                status, body = stand_in.respond(request)
                text = body if isinstance(body, str) else json.dumps(body)
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(text.encode())))
                self.end_headers()
                self.wfile.write(text.encode())

            do_GET = do_PATCH = do_POST = handle_any

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        server.daemon_threads = True
        servers.enter_context(serving(server))
        stand_in.url = f"http://127.0.0.1:{server.server_address[1]}"
        return stand_in

    with servers:
        yield start


@pytest.fixture
def kubeconfig(tmp_path, monkeypatch) -> Callable[[str], str]:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KEMBED_NAMESPACE", raising=False)

    def write(server: str) -> str:
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
            "clusters": [{"name": "stand-in", "cluster": {"server": server}}],
            "users": [{"name": "ci", "user": {"token": TOKEN}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "ci", "namespace": "kembed"}}],
        }))
        return str(path)

    return write


def inference_service(**overrides: Any) -> dict[str, Any]:
    """Our base InferenceService as the API server returns it mid-canary (v2 at 10 %, tag routing on)."""
    spec = yaml.safe_load((ROOT / "inferenceservices" / "base" / "inferenceservice.yaml").read_text())["spec"]
    spec["predictor"]["canaryTrafficPercent"] = 10
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": "kembed", "namespace": "kembed", "uid": "0b6c5a0e-8d1f-4c2b-9a57-1f0e3c2d4b6a",
            "resourceVersion": "48213", "generation": 2, "creationTimestamp": "2026-11-24T09:12:41Z",
            "annotations": {"serving.kserve.io/deploymentMode": "Knative",
                            "serving.kserve.io/enable-tag-routing": "true"},
        },
        "spec": spec,
        "status": {
            "observedGeneration": 2,
            "deploymentMode": "Serverless",
            "url": "http://kembed.kembed.example.com",
            "address": {"url": "http://kembed-transformer.kembed.svc.cluster.local"},
            "conditions": [
                {"type": "IngressReady", "status": "True", "lastTransitionTime": "2026-11-25T10:02:13Z"},
                {"type": "PredictorReady", "status": "True", "severity": "Info",
                 "lastTransitionTime": "2026-11-25T10:02:11Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-25T10:02:13Z"},
                {"type": "TransformerReady", "status": "True", "severity": "Info",
                 "lastTransitionTime": "2026-11-24T09:14:02Z"},
            ],
            "components": {
                "predictor": {
                    "latestCreatedRevision": "kembed-predictor-00002",
                    "latestReadyRevision": "kembed-predictor-00002",
                    "latestRolledoutRevision": "kembed-predictor-00001",
                    "previousRolledoutRevision": "kembed-predictor-00001",
                    "url": "http://kembed-predictor.kembed.example.com",
                    "address": {"url": "http://kembed-predictor.kembed.svc.cluster.local"},
                    "traffic": [
                        {"latestRevision": True, "percent": 10, "revisionName": "kembed-predictor-00002",
                         "tag": "latest", "url": "http://latest-kembed-predictor.kembed.example.com"},
                        {"latestRevision": False, "percent": 90, "revisionName": "kembed-predictor-00001",
                         "tag": "prev", "url": "http://prev-kembed-predictor.kembed.example.com"},
                    ],
                },
                "transformer": {
                    "latestCreatedRevision": "kembed-transformer-00001",
                    "latestReadyRevision": "kembed-transformer-00001",
                    "latestRolledoutRevision": "kembed-transformer-00001",
                    "url": "http://kembed-transformer.kembed.example.com",
                    "traffic": [
                        {"latestRevision": True, "percent": 100, "revisionName": "kembed-transformer-00001"},
                    ],
                },
            },
            "modelStatus": {"transitionStatus": "UpToDate", "states": {"activeModelState": "Loaded",
                                                                          "targetModelState": "Loaded"}},
        },
    }
    for key, value in overrides.items():
        isvc[key] = value
    return isvc


def api_answering(isvc: dict[str, Any]) -> Callable[[Request], Reply]:
    """GET and PATCH of our InferenceService answer the object, like the API server."""
    def respond(request: Request) -> Reply:
        if request.path == ISVC_PATH:
            return 200, isvc
        return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                     "message": "not found", "details": {"name": request.path.rsplit("/", 1)[-1]}}
    return respond


def run(kubeconfig_path: str, *args: str) -> int:
    return main(["--kubeconfig", kubeconfig_path, *args])


# --- patches ---------------------------------------------------------------------------------------


def test_canary_sends_one_json_patch_guarded_by_the_resource_version(serve, kubeconfig, capsys):
    isvc = inference_service()
    del isvc["spec"]["predictor"]["canaryTrafficPercent"]
    api = serve(api_answering(isvc))
    code = run(kubeconfig(api.url), "canary", "kembed", "--image", "ghcr.io/kembed/kembed:0.2.0",
               "--storage-uri", "s3://kembed-models/all-minilm-l6-v2/v2", "--percent", "10", "--same-tokenizer")
    assert code == 0, capsys.readouterr().err
    assert [(r.method, r.path) for r in api.requests] == [("GET", ISVC_PATH), ("PATCH", ISVC_PATH)]
    patch = api.requests[1]
    assert patch.content_type == "application/json-patch+json"
    assert patch.query == {"fieldManager": "kembed-rollout"}
    assert patch.authorization == f"Bearer {TOKEN}"
    base = "/spec/predictor/containers/0"
    assert patch.body == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "48213"},
        {"op": "replace", "path": f"{base}/image", "value": "ghcr.io/kembed/kembed:0.2.0"},
        {"op": "add", "path": f"{base}/env/-",
         "value": {"name": "STORAGE_URI", "value": "s3://kembed-models/all-minilm-l6-v2/v2"}},
        {"op": "add", "path": f"{base}/env/-", "value": {"name": "KEMBED_MODEL_DIR", "value": "/mnt/models"}},
        {"op": "add", "path": "/spec/predictor/canaryTrafficPercent", "value": 10},
    ]
    assert "10% of kembed/kembed" in capsys.readouterr().out


def test_canary_replaces_an_existing_model_location_in_place(serve, kubeconfig):
    isvc = inference_service()
    env = isvc["spec"]["predictor"]["containers"][0]["env"]
    env.insert(0, {"name": "STORAGE_URI", "value": "s3://kembed-models/all-minilm-l6-v2/v1"})
    env.append({"name": "KEMBED_MODEL_DIR", "value": "/mnt/models"})
    api = serve(api_answering(isvc))
    assert run(kubeconfig(api.url), "canary", "kembed", "--storage-uri", "s3://m/v3", "--percent", "25",
               "--same-tokenizer") == 0
    assert api.of("PATCH")[0].body == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "48213"},
        {"op": "replace", "path": "/spec/predictor/containers/0/env/0/value", "value": "s3://m/v3"},
        {"op": "replace", "path": f"/spec/predictor/containers/0/env/{len(env) - 1}/value", "value": "/mnt/models"},
        {"op": "add", "path": "/spec/predictor/canaryTrafficPercent", "value": 25},
    ]


@pytest.mark.parametrize(("verb", "percent"), [("promote", None), ("rollback", 0)])
def test_promote_and_rollback_are_merge_patches_of_canary_traffic_percent(serve, kubeconfig, verb, percent):
    api = serve(api_answering(inference_service()))
    assert run(kubeconfig(api.url), verb, "kembed") == 0
    (patch,) = api.requests
    assert (patch.method, patch.path, patch.content_type) == ("PATCH", ISVC_PATH, "application/merge-patch+json")
    assert patch.query == {"fieldManager": "kembed-rollout"}
    assert patch.body == {"spec": {"predictor": {"canaryTrafficPercent": percent}}}


def test_apply_server_side_applies_every_rendered_object(serve, kubeconfig, monkeypatch, capsys):
    from tests.test_manifests import render

    objects = render("examples/networkpolicy")
    api = serve(lambda request: (200, request.body))
    monkeypatch.setattr(sys, "stdin", io.StringIO(yaml.safe_dump_all(objects)))
    assert run(kubeconfig(api.url), "apply", "-f", "-") == 0, capsys.readouterr().err
    assert len(api.requests) == len(objects)
    plural = {"ConfigMap": "configmaps", "PodMonitor": "podmonitors", "PrometheusRule": "prometheusrules",
              "InferenceService": "inferenceservices", "NetworkPolicy": "networkpolicies"}
    for obj, request in zip(objects, api.requests, strict=True):
        group_version = obj["apiVersion"]
        prefix = f"/apis/{group_version}" if "/" in group_version else f"/api/{group_version}"
        assert request.method == "PATCH"
        assert request.path == f"{prefix}/namespaces/kembed/{plural[obj['kind']]}/{obj['metadata']['name']}"
        assert request.content_type == "application/apply-patch+yaml"
        assert request.query == {"fieldManager": "kembed-rollout", "force": "false"}
        assert request.body == obj
    out = capsys.readouterr().out
    assert "InferenceService kembed/kembed applied" in out
    assert "NetworkPolicy kembed/kembed-inferenceservice applied" in out


def test_apply_reads_files_and_can_force_and_dry_run(serve, kubeconfig, tmp_path):
    manifest = tmp_path / "isvc.yaml"
    isvc = inference_service()
    del isvc["status"]
    manifest.write_text(yaml.safe_dump(isvc))
    api = serve(lambda request: (200, request.body))
    assert run(kubeconfig(api.url), "apply", "-f", str(manifest), "--force-conflicts", "--dry-run") == 0
    (request,) = api.requests
    assert request.path == ISVC_PATH
    assert request.query == {"fieldManager": "kembed-rollout", "force": "true", "dryRun": "All"}


# --- status and wait --------------------------------------------------------------------------------


def test_status_prints_revisions_traffic_readiness_and_tag_urls(serve, kubeconfig, capsys):
    isvc = inference_service()
    api = serve(api_answering(isvc))
    assert run(kubeconfig(api.url), "status", "kembed") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == [
        "InferenceService kembed/kembed  mode: Knative",
        "URL: http://kembed.kembed.example.com",
        "Ready: True",
        "Canary: 10% to the latest predictor revision",
    ]
    table = [line.split() for line in lines[5:]]
    assert table == [
        ["COMPONENT", "REVISION", "TAG", "TRAFFIC", "READY", "URL"],
        ["transformer", "kembed-transformer-00001", "-", "100%", "True", "-"],
        ["predictor", "kembed-predictor-00002", "latest", "10%", "True",
         "http://latest-kembed-predictor.kembed.example.com"],
        ["predictor", "kembed-predictor-00001", "prev", "90%", "True",
         "http://prev-kembed-predictor.kembed.example.com"],
    ]


def test_status_marks_a_revision_that_is_not_ready_yet(serve, kubeconfig, capsys):
    isvc = inference_service()
    predictor = isvc["status"]["components"]["predictor"]
    predictor["latestCreatedRevision"] = "kembed-predictor-00003"
    isvc["status"]["conditions"][2] = {"type": "Ready", "status": "False", "reason": "RevisionMissing",
                                       "message": "Revision \"kembed-predictor-00003\" is loading its model"}
    api = serve(api_answering(isvc))
    assert run(kubeconfig(api.url), "status", "kembed") == 0
    out = capsys.readouterr().out
    assert 'Ready: False  (RevisionMissing: Revision "kembed-predictor-00003" is loading its model)' in out
    assert ("Rolling out: predictor: revision kembed-predictor-00003 is not ready yet (latest ready: "
            "kembed-predictor-00002)") in out
    assert ["predictor", "kembed-predictor-00003", "-", "0%", "False", "-"] in [line.split() for line in
                                                                               out.splitlines()]


def test_wait_ignores_the_top_level_observed_generation(serve, kubeconfig, capsys):
    """KServe copies observedGeneration from the Knative Service reconciled last: behind the ISVC's generation
    after a predictor-only change, while every component is Ready. That alone must not hold `wait` up."""
    isvc = inference_service()
    isvc["metadata"]["generation"], isvc["status"]["observedGeneration"] = 5, 1
    api = serve(api_answering(isvc))
    assert run(kubeconfig(api.url), "wait", "kembed", "--timeout", "30", "--interval", "0.01") == 0
    assert len(api.requests) == 1 and "is Ready" in capsys.readouterr().out


def test_wait_follows_kserve_through_a_canary(serve, kubeconfig, capsys):
    """Stale status, then the new revision created but not ready, then ready with the canary split."""
    kserve = KServe(settled_service(), ISVC_PATH)
    api = serve(kserve.respond)
    config = kubeconfig(api.url)
    assert run(config, "canary", "kembed", "--image", "ghcr.io/kembed/kembed:0.2.0", "--percent", "10") == 0
    assert run(config, "wait", "kembed", "--timeout", "30", "--interval", "0.01") == 0
    assert [r.method for r in api.requests] == ["GET", "PATCH", "GET", "GET", "GET"]
    predictor = kserve.isvc["status"]["components"]["predictor"]
    assert [(t["revisionName"], t["percent"]) for t in predictor["traffic"]] == [
        ("kembed-predictor-00002", 10), ("kembed-predictor-00001", 90)]
    assert kserve.isvc["metadata"]["generation"] == 4 and kserve.isvc["status"]["observedGeneration"] == 1


def test_wait_times_out_with_the_reason(serve, kubeconfig, capsys):
    isvc = inference_service()
    isvc["status"]["conditions"][1] = {"type": "PredictorReady", "status": "False",
                                       "reason": "RevisionFailed", "message": "image pull back-off"}
    isvc["status"]["conditions"][2] = {"type": "Ready", "status": "False", "reason": "PredictorReady not ready"}
    isvc["status"]["components"]["predictor"]["latestCreatedRevision"] = "kembed-predictor-00003"
    api = serve(api_answering(isvc))
    assert run(kubeconfig(api.url), "wait", "kembed", "--timeout", "0.2", "--interval", "0.05") == 1
    assert capsys.readouterr().err.strip() == (
        "kembed-rollout: InferenceService kembed/kembed not ready after 0.2s: Ready=False (PredictorReady not ready); "
        "predictor: PredictorReady=False (RevisionFailed: image pull back-off); "
        "predictor: revision kembed-predictor-00003 is not ready yet (latest ready: kembed-predictor-00002)")
    assert api.requests and {r.method for r in api.requests} == {"GET"}


def test_wait_checks_the_traffic_split_against_the_spec(serve, kubeconfig, capsys):
    isvc = inference_service()
    isvc["spec"]["predictor"]["canaryTrafficPercent"] = 30   # asked for, not routed yet
    api = serve(api_answering(isvc))
    assert run(kubeconfig(api.url), "wait", "kembed", "--timeout", "0.1", "--interval", "0.05") == 1
    assert ("predictor: traffic sends 10% to kembed-predictor-00002, the spec asks 30% for kembed-predictor-00002"
            in capsys.readouterr().err)


# --- the guard --------------------------------------------------------------------------------------

CANARY = "kembed-predictor-00002"   # the revision the stand-in creates for the canary


def settled_service() -> dict[str, Any]:
    """v1 fully rolled out (no canary); generation 3 while the transformer's Knative Service is at 1."""
    isvc = inference_service()
    del isvc["spec"]["predictor"]["canaryTrafficPercent"]
    isvc["metadata"]["generation"] = 3
    isvc["status"]["components"]["predictor"] = {
        "latestCreatedRevision": "kembed-predictor-00001", "latestReadyRevision": "kembed-predictor-00001",
        "latestRolledoutRevision": "kembed-predictor-00001",
        "url": "http://kembed-predictor.kembed.example.com",
        "address": {"url": "http://kembed-predictor.kembed.svc.cluster.local"},
        "traffic": [{"latestRevision": True, "percent": 100, "revisionName": "kembed-predictor-00001",
                     "tag": "latest", "url": "http://latest-kembed-predictor.kembed.example.com"}],
    }
    return isvc


def kembed_series(prometheus: Prometheus, component: str, revision: str, ok: float, failed: float = 0,
                  p99_bucket: str = "0.25") -> None:
    """What the PodMonitor stores for one revision: labelled counters and a latency histogram."""
    labels = {"namespace": "kembed", "isvc": "kembed", "component": component, "revision": revision,
              "model": "minilm", "pod": f"{revision}-deployment-7d9f8-x2k4q"}
    prometheus.add("kembed_requests_total", ok, status="200", protocol="rest", **labels)
    if failed:
        prometheus.add("kembed_requests_total", failed, status="503", protocol="rest", **labels)
    for le in ("0.1", "0.25", "0.5", "1.0", "+Inf"):   # half the requests under 100 ms, half under p99_bucket
        share = 0.5 if float(le) < float(p99_bucket) else 1.0
        prometheus.add("kembed_request_duration_seconds_bucket", (ok + failed) * share, le=le, **labels)


def healthy_traffic(prometheus: Prometheus) -> Prometheus:
    """v2 (the canary) healthy at 5 req/s; v1 failing half its requests, so watching v1 would roll back."""
    kembed_series(prometheus, "predictor", CANARY, ok=5)
    kembed_series(prometheus, "predictor", "kembed-predictor-00001", ok=20, failed=20)
    kembed_series(prometheus, "transformer", "kembed-transformer-00001", ok=50)
    return prometheus


def guarded(kubeconfig_path: str, prometheus_url: str, *extra: str) -> int:
    return run(kubeconfig_path, "canary", "kembed", "--image", "ghcr.io/kembed/kembed:0.2.0", "--percent", "10",
               "--guard", "--prometheus-url", prometheus_url, "--window", "0.2", "--interval", "0.05",
               "--min-requests", "50", "--ready-timeout", "5", *extra)


def rollout_stand_ins(serve, prometheus: Prometheus, **kserve: Any) -> tuple[KServe, StandIn, StandIn]:
    cluster = KServe(settled_service(), ISVC_PATH, **kserve)
    return cluster, serve(cluster.respond), serve(prometheus.respond)


def traffic(cluster: KServe) -> list[tuple[str, int]]:
    return [(t["revisionName"], t["percent"]) for t in cluster.isvc["status"]["components"]["predictor"]["traffic"]]


@pytest.mark.parametrize("extra", [[], ["--promote"]])
def test_guard_watches_the_revision_it_created_and_promotes_with_traffic(serve, kubeconfig, capsys, extra):
    cluster, api, prometheus = rollout_stand_ins(serve, healthy_traffic(Prometheus()))
    assert guarded(kubeconfig(api.url), prometheus.url, *extra) == 0, capsys.readouterr().err
    patches = api.of("PATCH")
    assert patches[0].content_type == "application/json-patch+json"
    rest = [patch.body for patch in patches[1:]]
    assert rest == ([{"spec": {"predictor": {"canaryTrafficPercent": None}}}] if extra else [])
    out = capsys.readouterr().out
    assert f"guarding canary revision {CANARY}" in out and "(300 requests)" in out  # 5/s over the 60 s minimum
    queries = [request.query["query"] for request in prometheus.requests]
    assert all("kembed-predictor-00001" not in query for query in queries)
    assert any(f'revision="{CANARY}"' in query and 'component="predictor"' in query for query in queries)
    cluster.reconcile(), cluster.reconcile()
    assert traffic(cluster) == ([(CANARY, 100)] if extra else [(CANARY, 10), ("kembed-predictor-00001", 90)])


def test_guard_with_no_data_rolls_back_and_says_why(serve, kubeconfig, capsys):
    prometheus = Prometheus()
    kembed_series(prometheus, "predictor", "kembed-predictor-00001", ok=20)   # only the old revision has samples
    cluster, api, stand_in = rollout_stand_ins(serve, prometheus)
    assert guarded(kubeconfig(api.url), stand_in.url, "--promote") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("kembed-rollout: canary of kembed/kembed rolled back: only 0 canary requests in 0.2s, "
                          "at least 50 are needed to call it healthy (sum(increase(kembed_requests_total{")
    assert f'revision="{CANARY}"' in err
    assert api.of("PATCH")[-1].body == {"spec": {"predictor": {"canaryTrafficPercent": 0}}}
    cluster.reconcile(), cluster.reconcile()
    assert traffic(cluster) == [(CANARY, 0), ("kembed-predictor-00001", 100)]


def test_guard_with_too_little_traffic_rolls_back(serve, kubeconfig, capsys):
    prometheus = Prometheus()
    kembed_series(prometheus, "predictor", CANARY, ok=0.5)   # 30 requests in the 60 s minimum range
    _, api, stand_in = rollout_stand_ins(serve, prometheus)
    assert guarded(kubeconfig(api.url), stand_in.url) == 1
    assert "only 30 canary requests in 0.2s, at least 50" in capsys.readouterr().err


@pytest.mark.parametrize(("series", "reason"), [
    # crash-looping canary: no predictor samples at all, the transformer answers 503 to its share
    ([("kembed_requests_total", 45, {"status": "200"}), ("kembed_requests_total", 5, {"status": "503"})],
     "transformer 5xx ratio 10.00% > 1.00% (sum(rate(kembed_requests_total{namespace=\"kembed\", isvc=\"kembed\", "
     "component=\"transformer\", status=~\"5..\"}[1m])) / sum(rate(kembed_requests_total{namespace=\"kembed\", "
     "isvc=\"kembed\", component=\"transformer\"}[1m])))"),
])
def test_guard_rolls_back_a_crash_looping_canary_on_transformer_5xx(serve, kubeconfig, capsys, series, reason):
    prometheus = Prometheus()
    for name, rate, labels in series:
        prometheus.add(name, rate, namespace="kembed", isvc="kembed", component="transformer",
                       revision="kembed-transformer-00001", **labels)
    _, api, stand_in = rollout_stand_ins(serve, prometheus)
    assert guarded(kubeconfig(api.url), stand_in.url, "--promote") == 1
    assert capsys.readouterr().err.strip() == f"kembed-rollout: canary of kembed/kembed rolled back: {reason}"
    assert api.of("PATCH")[-1].body == {"spec": {"predictor": {"canaryTrafficPercent": 0}}}


@pytest.mark.parametrize(("name", "labels", "signal"), [
    ("revision_request_count", {"namespace_name": "kembed", "revision_name": CANARY}, "predictor queue-proxy"),
    ("activator_request_count", {"namespace_name": "kembed", "revision_name": CANARY}, "predictor activator"),
    ("kn_serving_invocation_duration_seconds_count",
     {"namespace": "kembed", "pod": f"{CANARY}-deployment-7d9f8-x2k4q"}, "predictor queue-proxy"),
    ("http_server_request_duration_seconds_count",
     {"k8s_namespace_name": "kembed", "kn_revision_name": CANARY}, "predictor activator"),
])
def test_guard_reads_knatives_revision_metrics_where_present(serve, kubeconfig, capsys, name, labels, signal):
    prometheus = healthy_traffic(Prometheus())
    opencensus = name in ("revision_request_count", "activator_request_count")
    for code, rate in (("200", 9), ("502", 1)):
        status = {"response_code": code, "response_code_class": code[0] + "xx"} if opencensus else {
            "http_response_status_code": code}
        prometheus.add(name, rate, **labels, **status)
    _, api, stand_in = rollout_stand_ins(serve, prometheus)
    assert guarded(kubeconfig(api.url), stand_in.url) == 1
    assert f"rolled back: {signal} 5xx ratio 10.00% > 1.00% (sum(rate({name}{{" in capsys.readouterr().err


def test_guard_rolls_back_on_restarts_of_canary_pods(serve, kubeconfig, capsys):
    prometheus = healthy_traffic(Prometheus())
    prometheus.add("kube_pod_container_status_restarts_total", 2 / 60, namespace="kembed",
                   pod=f"{CANARY}-deployment-7d9f8-x2k4q", container="kserve-container")
    prometheus.add("kube_pod_container_status_restarts_total", 1, namespace="kembed",
                   pod="kembed-predictor-00001-deployment-5c6d7-abcde", container="kserve-container")
    _, api, stand_in = rollout_stand_ins(serve, prometheus)
    assert guarded(kubeconfig(api.url), stand_in.url) == 1
    err = capsys.readouterr().err
    assert "rolled back: container restarts 2 > 0 (sum(increase(kube_pod_container_status_restarts_total{" in err


@pytest.mark.parametrize(("failed", "p99_bucket", "reason"), [
    (0.25, "0.25", "predictor 5xx ratio 4.76% > 1.00%"),
    (0, "1.0", "predictor p99 990 ms > 500 ms"),
])
def test_guard_rolls_back_when_the_canary_breaches_a_limit(serve, kubeconfig, capsys, failed, p99_bucket, reason):
    prometheus = Prometheus()
    kembed_series(prometheus, "predictor", CANARY, ok=5, failed=failed, p99_bucket=p99_bucket)
    _, api, stand_in = rollout_stand_ins(serve, prometheus)
    assert guarded(kubeconfig(api.url), stand_in.url) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kembed-rollout: canary of kembed/kembed rolled back: {reason} (")
    assert f'revision="{CANARY}"' in err
    patches = api.of("PATCH")
    assert len(patches) == 2 and patches[1].body == {"spec": {"predictor": {"canaryTrafficPercent": 0}}}


def test_guard_rolls_back_a_canary_that_never_gets_ready(serve, kubeconfig, capsys):
    _, api, stand_in = rollout_stand_ins(serve, healthy_traffic(Prometheus()), never_ready={CANARY})
    code = run(kubeconfig(api.url), "canary", "kembed", "--image", "ghcr.io/kembed/kembed:0.2.0", "--percent", "10",
               "--guard", "--prometheus-url", stand_in.url, "--ready-timeout", "0.3", "--interval", "0.05")
    assert code == 1
    err = capsys.readouterr().err
    assert "rolled back: InferenceService kembed/kembed not ready after 0.3s" in err
    assert "back-off restarting failed container" in err and f"revision {CANARY} is not ready yet" in err
    assert stand_in.requests == []   # never watched a revision that was not serving
    assert api.of("PATCH")[-1].body == {"spec": {"predictor": {"canaryTrafficPercent": 0}}}


def test_guard_rolls_back_when_it_cannot_see(serve, kubeconfig, capsys):
    cluster = KServe(settled_service(), ISVC_PATH)
    api = serve(cluster.respond)
    prometheus = serve(lambda request: (503, {"status": "error", "error": "query timed out"}))
    assert guarded(kubeconfig(api.url), prometheus.url) == 1
    err = capsys.readouterr().err
    assert "rolled back: prometheus query failed: HTTP 503: query timed out" in err
    assert api.of("PATCH")[-1].body == {"spec": {"predictor": {"canaryTrafficPercent": 0}}}


def test_a_concurrent_change_fails_the_canary_patch_and_changes_nothing(serve, kubeconfig, capsys):
    cluster = KServe(settled_service(), ISVC_PATH)

    def racing(request: Request) -> Reply:
        reply = cluster.respond(request)
        if request.method == "GET":   # someone else writes between our read and our patch
            cluster.isvc["metadata"]["resourceVersion"] = "99999"
        return reply

    api = serve(racing)
    assert run(kubeconfig(api.url), "canary", "kembed", "--image", "x:2", "--percent", "10") == 1
    assert capsys.readouterr().err == (
        "kembed-rollout: InferenceService kembed/kembed changed since it was read (someone else updated it); "
        "nothing was patched, run the command again\n")
    assert cluster.isvc["spec"]["predictor"]["containers"][0]["image"] == "ghcr.io/kembed/kembed:0.1.0"
    assert "canaryTrafficPercent" not in cluster.isvc["spec"]["predictor"]


def test_the_prometheus_stand_in_evaluates_label_matchers():
    prometheus = Prometheus()
    kembed_series(prometheus, "predictor", CANARY, ok=4, failed=1)
    selector = 'namespace="kembed", component="predictor", revision=~"kembed-predictor-0+2"'
    assert prometheus.evaluate(f'sum(rate(kembed_requests_total{{{selector}, status=~"5.."}}[1m]))') == {
        frozenset(): 1.0}
    assert prometheus.evaluate(f"sum(increase(kembed_requests_total{{{selector}}}[2m]))") == {frozenset(): 600.0}
    assert prometheus.evaluate('sum(rate(kembed_requests_total{namespace="kembed", revison="x"}[1m]))') == {}
    assert prometheus.evaluate('sum(rate(kembed_requests_total{component!="predictor"}[1m]))') == {}
    assert prometheus.evaluate('sum(rate(kembed_requests_total{status!~"2.."}[1m]))') == {frozenset(): 1.0}
    assert prometheus.evaluate("sum by (le) (rate(kembed_request_duration_seconds_bucket[1m]))")[
        frozenset({("le", "+Inf")})] == 5.0


# --- errors ---------------------------------------------------------------------------------------


def test_no_cluster_configuration(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    assert main(["status", "kembed"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"kembed-rollout: no cluster configuration: no kubeconfig at {tmp_path / 'missing'}")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("status", "body", "message"), [
    (404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
           "message": 'inferenceservices.serving.kserve.io "kembed" not found',
           "details": {"name": "kembed", "group": "serving.kserve.io", "kind": "inferenceservices"}},
     "InferenceService kembed/kembed not found"),
    (404, "404 page not found\n",
     "the API server does not serve inferenceservices.serving.kserve.io/v1beta1: is its CRD installed "
     "(KServe, KEDA, ...)?"),
    (403, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
           "message": 'inferenceservices.serving.kserve.io "kembed" is forbidden: User "system:serviceaccount:ci:'
                      'deployer" cannot patch resource "inferenceservices" in API group "serving.kserve.io" in the '
                      'namespace "kembed"',
           "details": {"name": "kembed", "group": "serving.kserve.io", "kind": "inferenceservices"}},
     'forbidden: inferenceservices.serving.kserve.io "kembed" is forbidden: User "system:serviceaccount:ci:deployer"'
     ' cannot patch resource "inferenceservices" in API group "serving.kserve.io" in the namespace "kembed"'),
])
@pytest.mark.parametrize("verb", ["status", "promote", "canary"])
def test_api_errors_become_one_line_messages(serve, kubeconfig, capsys, status, body, message, verb):
    api = serve(lambda request: (status, body))
    args = [verb, "kembed"] + (["--percent", "10"] if verb == "canary" else [])
    assert run(kubeconfig(api.url), *args) == 1
    assert capsys.readouterr().err == f"kembed-rollout: {message}\n"
    assert len(api.requests) == 1  # nothing more is tried after the error


def test_unreachable_api_server(kubeconfig, capsys):
    assert run(kubeconfig(f"http://127.0.0.1:{free_port()}"), "status", "kembed") == 1
    err = capsys.readouterr().err
    assert err.startswith("kembed-rollout: cannot reach the Kubernetes API at http://127.0.0.1:")
    assert len(err.strip().splitlines()) == 1


def test_canary_refuses_standard_mode_before_patching(serve, kubeconfig, capsys):
    standard = inference_service()
    standard["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Standard"
    api = serve(api_answering(standard))
    assert run(kubeconfig(api.url), "canary", "kembed", "--percent", "10") == 1
    assert "canary rollouts need Knative mode; this InferenceService is in Standard mode" in capsys.readouterr().err
    assert api.of("PATCH") == []


def test_a_new_model_dir_needs_the_same_tokenizer(serve, kubeconfig, capsys):
    """The transformer tokenizes for both revisions: a predictor-only canary of another tokenizer would
    answer wrong vectors with 200, so a new model dir is refused unless the user confirms the tokenizer."""
    api = serve(api_answering(inference_service()))
    assert run(kubeconfig(api.url), "canary", "kembed", "--storage-uri", "s3://m/v2", "--percent", "10") == 1
    err = capsys.readouterr().err
    assert "wrong vectors" in err and "--same-tokenizer" in err and "second InferenceService" in err
    assert api.requests == []


# --- command line -------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["status", "kembed", "-n", "kembed", "--kubeconfig", "{config}"],
    ["-n", "elsewhere", "--kubeconfig", "{config}", "status", "-n", "kembed", "kembed"],   # the later one wins
    ["--kubeconfig", "/nonexistent", "status", "kembed", "--kubeconfig", "{config}", "--namespace", "kembed"],
])
def test_cluster_options_work_before_or_after_the_subcommand(serve, kubeconfig, capsys, args):
    api = serve(api_answering(inference_service()))
    config = kubeconfig(api.url)
    assert main([arg.replace("{config}", config) for arg in args]) == 0, capsys.readouterr().err
    assert [r.path for r in api.requests] == [ISVC_PATH]


@pytest.mark.parametrize(("args", "message"), [
    (["canary", "kembed", "--percent", "150"], "argument --percent: must be within 0..100, got 150"),
    (["canary", "kembed", "--percent", "-1"], "argument --percent: must be within 0..100, got -1"),
    (["canary", "kembed", "--percent", "ten"], "argument --percent: not a number: 'ten'"),
    (["canary", "kembed", "--percent", "10", "--max-error-ratio", "2"],
     "argument --max-error-ratio: must be within 0..1, got 2"),
    (["canary", "kembed", "--percent", "10", "--window", "0"], "argument --window: must be longer than 0, got '0'"),
    (["canary", "kembed", "--percent", "10", "--min-requests", "0"], "argument --min-requests: must be at least 1"),
    (["wait", "kembed", "--timeout", "soon"], "argument --timeout: not a duration: 'soon'"),
])
def test_argument_ranges_are_checked_before_any_api_call(serve, kubeconfig, capsys, args, message):
    api = serve(api_answering(inference_service()))
    with pytest.raises(SystemExit) as exited:
        run(kubeconfig(api.url), *args)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert api.requests == []


def test_a_bad_environment_default_is_refused_like_a_flag(serve, kubeconfig, capsys, monkeypatch):
    monkeypatch.setenv("KEMBED_GUARD_MAX_ERROR_RATIO", "5")
    with pytest.raises(SystemExit):
        main(["canary", "kembed", "--percent", "10"])
    assert "--max-error-ratio: must be within 0..1, got 5" in capsys.readouterr().err


@pytest.mark.parametrize("verb", ["apply", "canary", "promote", "rollback", "status", "wait"])
def test_every_option_has_help_with_its_default(verb, capsys):
    from inferenceservices.__main__ import build_parser

    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for action in commands.choices[verb]._actions:
        assert action.help, (verb, action.dest)
        has_default = action.default not in (None, False, argparse.SUPPRESS)
        if action.option_strings and has_default and action.dest != "help":
            assert "default: " in action.help, (verb, action.dest)
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    text = capsys.readouterr().out
    assert "(default:" not in text and "None" not in text and "%%" not in text
    assert verb == "apply" or "InferenceService name (metadata.name)" in text


def test_the_module_and_its_namespace_default(serve, kubeconfig, tmp_path):
    """`python -m inferenceservices` runs as a program; the namespace comes from the kubeconfig context."""
    api = serve(api_answering(inference_service()))
    result = subprocess.run(
        [sys.executable, "-m", "inferenceservices", "--kubeconfig", kubeconfig(api.url), "status", "kembed"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("InferenceService kembed/kembed")
    assert [r.path for r in api.requests] == [ISVC_PATH]
