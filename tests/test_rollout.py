"""kembed-rollout against in-process stand-ins for the Kubernetes API and Prometheus.

There is no Kubernetes cluster (and no Prometheus) on this machine, so the tool talks to two tiny HTTP
servers on 127.0.0.1: one answers like the API server (realistic InferenceService objects, Status errors,
the plain-text 404 of an unknown resource type) and records every request, so the tests can assert the
exact patches the real `kubernetes` client sends; the other answers Prometheus' /api/v1/query. The tool
itself runs unchanged: real kubeconfig loading, real HTTP, real client serialisation.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml

from inferenceservices.__main__ import main
from kembed.launch import ROOT, free_port

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
    servers: list[ThreadingHTTPServer] = []

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
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        stand_in.url = f"http://127.0.0.1:{server.server_address[1]}"
        return stand_in

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


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
               "--storage-uri", "s3://kembed-models/all-minilm-l6-v2/v2", "--percent", "10")
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
    assert run(kubeconfig(api.url), "canary", "kembed", "--storage-uri", "s3://m/v3", "--percent", "25") == 0
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

    objects = render("overlays/cpu") + render("examples/networkpolicy")
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
    assert "InferenceService kembed/kembed applied" in out and "NetworkPolicy kembed/kembed-ingress applied" in out


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
    assert ["predictor", "kembed-predictor-00003", "-", "0%", "False", "-"] in [line.split() for line in
                                                                               out.splitlines()]


def test_wait_polls_until_the_current_generation_is_ready(serve, kubeconfig, capsys):
    states = iter([("False", 2), ("True", 2), ("True", 3)])  # not ready; ready but stale; ready

    def respond(request: Request) -> Reply:
        status, observed = next(states)
        isvc = inference_service()
        isvc["metadata"]["generation"] = 3
        isvc["status"]["observedGeneration"] = observed
        isvc["status"]["conditions"][2]["status"] = status
        return 200, isvc

    api = serve(respond)
    assert run(kubeconfig(api.url), "wait", "kembed", "--timeout", "30", "--interval", "0.01") == 0
    assert len(api.requests) == 3 and "is Ready" in capsys.readouterr().out


def test_wait_times_out_with_the_reason(serve, kubeconfig, capsys):
    isvc = inference_service()
    isvc["status"]["conditions"][2] = {"type": "Ready", "status": "False", "reason": "PredictorConfigurationReady",
                                       "message": "image pull back-off"}
    api = serve(api_answering(isvc))
    assert run(kubeconfig(api.url), "wait", "kembed", "--timeout", "0.2", "--interval", "0.05") == 1
    assert capsys.readouterr().err.strip() == (
        "kembed-rollout: InferenceService kembed/kembed not ready after 0.2s "
        "(Ready=False, PredictorConfigurationReady: image pull back-off)")
    assert api.requests and {r.method for r in api.requests} == {"GET"}


# --- the guard --------------------------------------------------------------------------------------


def prometheus_answering(error_ratio: str | None, p99: str | None) -> Callable[[Request], Reply]:
    def respond(request: Request) -> Reply:
        value = p99 if request.query["query"].startswith("histogram_quantile") else error_ratio
        result = [] if value is None else [{"metric": {}, "value": [1764064800.0, value]}]
        return 200, {"status": "success", "data": {"resultType": "vector", "result": result}}
    return respond


def guarded(kubeconfig_path: str, prometheus_url: str, *extra: str) -> int:
    return run(kubeconfig_path, "canary", "kembed", "--storage-uri", "s3://m/v2", "--percent", "10", "--guard",
               "--prometheus-url", prometheus_url, "--window", "0.2", "--interval", "0.05", *extra)


@pytest.mark.parametrize(("error_ratio", "p99", "reason"), [
    ("0.05", "0.12", "error ratio 5.00% > 1.00%"),
    ("0", "0.9", "p99 900 ms > 500 ms"),
])
def test_guard_rolls_back_when_the_canary_breaches_a_limit(serve, kubeconfig, capsys, error_ratio, p99, reason):
    api = serve(api_answering(inference_service()))
    prometheus = serve(prometheus_answering(error_ratio, p99))
    assert guarded(kubeconfig(api.url), prometheus.url) == 1
    assert capsys.readouterr().err.strip() == f"kembed-rollout: canary of kembed/kembed rolled back: {reason}"
    patches = api.of("PATCH")
    assert len(patches) == 2 and patches[0].content_type == "application/json-patch+json"
    assert patches[1].content_type == "application/merge-patch+json"
    assert patches[1].body == {"spec": {"predictor": {"canaryTrafficPercent": 0}}}
    selector = 'namespace="kembed", isvc="kembed", component="predictor", revision="kembed-predictor-00002"'
    assert all(selector in request.query["query"] for request in prometheus.requests)
    assert any('status=~"5.."' in request.query["query"] for request in prometheus.requests)


@pytest.mark.parametrize("extra", [[], ["--promote"]])
def test_guard_leaves_a_healthy_canary_alone(serve, kubeconfig, capsys, extra):
    api = serve(api_answering(inference_service()))
    prometheus = serve(prometheus_answering("0.001", "0.12"))
    assert guarded(kubeconfig(api.url), prometheus.url, *extra) == 0, capsys.readouterr().err
    patches = api.of("PATCH")
    assert patches[0].content_type == "application/json-patch+json"
    rest = [patch.body for patch in patches[1:]]
    assert rest == ([{"spec": {"predictor": {"canaryTrafficPercent": None}}}] if extra else [])
    assert len(prometheus.requests) >= 2 and len(prometheus.requests) % 2 == 0  # two queries per check
    assert "healthy" in capsys.readouterr().out


def test_guard_treats_no_traffic_as_no_breach(serve, kubeconfig):
    api = serve(api_answering(inference_service()))
    prometheus = serve(prometheus_answering(None, None))
    assert guarded(kubeconfig(api.url), prometheus.url) == 0
    assert len(api.of("PATCH")) == 1


def test_guard_rolls_back_when_it_cannot_see(serve, kubeconfig, capsys):
    api = serve(api_answering(inference_service()))
    prometheus = serve(lambda request: (503, {"status": "error", "error": "query timed out"}))
    assert guarded(kubeconfig(api.url), prometheus.url) == 1
    err = capsys.readouterr().err
    assert "rolled back: prometheus query failed: HTTP 503: query timed out" in err
    assert api.of("PATCH")[-1].body == {"spec": {"predictor": {"canaryTrafficPercent": 0}}}


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


def test_canary_rejects_bad_percentages_and_standard_mode_before_patching(serve, kubeconfig, capsys):
    api = serve(api_answering(inference_service()))
    assert run(kubeconfig(api.url), "canary", "kembed", "--percent", "101") == 1
    assert capsys.readouterr().err == "kembed-rollout: --percent must be within 0..100, got 101\n"
    standard = inference_service()
    standard["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Standard"
    api = serve(api_answering(standard))
    assert run(kubeconfig(api.url), "canary", "kembed", "--percent", "10") == 1
    assert "canary rollouts need Knative mode; this InferenceService is in Standard mode" in capsys.readouterr().err
    assert api.of("PATCH") == []


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
