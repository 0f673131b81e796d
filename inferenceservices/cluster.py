"""Talking to the Kubernetes API with the plain `kubernetes` client, with one-line errors.

Only CustomObjectsApi (and the ApiClient under it for core-group objects in `apply`): no Knative or
KServe client, so the tool runs wherever `kubernetes` is installed.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

GROUP, VERSION, PLURAL, KIND = "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"
FIELD_MANAGER = "kembed-rollout"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# Kinds whose objects live outside namespaces (the ones a rendered manifest may plausibly carry).
CLUSTER_SCOPED = {
    "Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
    "StorageClass", "PriorityClass", "ClusterServingRuntime", "ClusterStorageContainer",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
}


class RolloutError(Exception):
    """A failure worth one line to the user; the CLI prints it and exits non-zero."""


@dataclass
class Cluster:
    api: client.ApiClient
    namespace: str
    host: str

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)


def connect(kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None) -> Cluster:
    """kubeconfig (flag, $KUBECONFIG or ~/.kube/config) when there is one, else the in-cluster service account."""
    default = str(Path("~/.kube/config").expanduser())
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or default
    try:
        if Path(path).is_file():
            api = config.new_client_from_config(config_file=path, context=context)
            if namespace is None:
                _, active = config.list_kube_config_contexts(config_file=path)
                chosen = active
                if context:
                    contexts, _ = config.list_kube_config_contexts(config_file=path)
                    chosen = next((c for c in contexts if c["name"] == context), active)
                namespace = (chosen or {}).get("context", {}).get("namespace")
        else:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            api = client.ApiClient(configuration)
            if namespace is None:
                ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                namespace = ns_file.read_text().strip() if ns_file.is_file() else None
    except ConfigException as exc:
        raise RolloutError(
            f"no cluster configuration: no kubeconfig at {path} (set --kubeconfig or KUBECONFIG) and not running "
            f"in a pod ({exc})"
        ) from None
    return Cluster(api, namespace or "default", api.configuration.host)


def describe(exc: ApiException, what: str, resource: str = f"{PLURAL}.{GROUP}/{VERSION}") -> RolloutError:
    """Turns an API error into a message that says what to do about it."""
    status: dict[str, Any] = {}
    with contextlib.suppress(TypeError, ValueError):
        status = json.loads(exc.body or "{}")
    message = status.get("message") or (exc.body or exc.reason or "").strip()
    if exc.status == 404:
        if status.get("kind") == "Status" and status.get("details", {}).get("name"):
            return RolloutError(f"{what} not found")
        # The API server answers a plain "404 page not found" for a resource type it does not serve.
        return RolloutError(f"the API server does not serve {resource}: is its CRD installed (KServe, KEDA, ...)?")
    if exc.status == 403:
        return RolloutError(f"forbidden: {message}")
    if exc.status == 401:
        return RolloutError(f"unauthorized: the credentials in your kubeconfig were refused ({message})")
    if exc.status == 409:
        return RolloutError(f"conflict on {what}: {message}")
    if exc.status == 422 and "/metadata/resourceVersion" in message and "test failed" in message:
        # A JSON patch's `test` of the resourceVersion we read failed: the API server answers 422
        # (applyJSPatch in k8s.io/apiserver pkg/endpoints/handlers/patch.go), nothing was changed.
        return RolloutError(f"{what} changed since it was read (someone else updated it); nothing was patched, "
                            "run the command again")
    if exc.status == 422:
        return RolloutError(f"{what} rejected: {message}")
    return RolloutError(f"{what}: HTTP {exc.status}: {message}")


def call(cluster: Cluster, what: str, function: Any, *args: Any, resource: str | None = None, **kwargs: Any) -> Any:
    """Runs one API call and converts its failures into RolloutError."""
    try:
        return function(*args, **kwargs)
    except ApiException as exc:
        raise (describe(exc, what, resource) if resource else describe(exc, what)) from None
    except urllib3.exceptions.HTTPError as exc:
        raise RolloutError(f"cannot reach the Kubernetes API at {cluster.host}: {exc}") from None


def get_isvc(cluster: Cluster, name: str) -> dict[str, Any]:
    return call(
        cluster, f"InferenceService {cluster.namespace}/{name}", cluster.custom.get_namespaced_custom_object,
        GROUP, VERSION, cluster.namespace, PLURAL, name,
    )


def patch_isvc(cluster: Cluster, name: str, body: Any, content_type: str) -> dict[str, Any]:
    return call(
        cluster, f"InferenceService {cluster.namespace}/{name}", cluster.custom.patch_namespaced_custom_object,
        GROUP, VERSION, cluster.namespace, PLURAL, name, body, field_manager=FIELD_MANAGER,
        _content_type=content_type,
    )


def plural_of(kind: str) -> str:
    """kubectl's own guess (apimachinery's UnsafeGuessKindToResource): right for every kind kembed renders."""
    lower = kind.lower()
    if lower.endswith("s"):
        return lower + "es"
    if lower.endswith("y"):
        return lower[:-1] + "ies"
    return lower + "s"


def apply_object(cluster: Cluster, obj: dict[str, Any], force: bool = False, dry_run: bool = False) -> dict[str, Any]:
    """Server-side apply of one object, owned by field manager `kembed-rollout`."""
    api_version, kind, name = obj.get("apiVersion", ""), obj.get("kind", ""), obj.get("metadata", {}).get("name")
    if not (api_version and kind and name):
        raise RolloutError("every object to apply needs apiVersion, kind and metadata.name")
    group, _, version = api_version.rpartition("/")
    plural = plural_of(kind)
    namespaced = kind not in CLUSTER_SCOPED
    namespace = obj["metadata"].get("namespace") or cluster.namespace
    what = f"{kind} {namespace + '/' if namespaced else ''}{name}"
    resource = f"{plural}.{group}/{version}" if group else f"{plural}/{version}"
    options: dict[str, Any] = {"field_manager": FIELD_MANAGER, "force": force, "_content_type": APPLY_PATCH}
    if dry_run:
        options["dry_run"] = "All"
    custom = cluster.custom
    if group and namespaced:
        return call(cluster, what, custom.patch_namespaced_custom_object, group, version, namespace, plural, name,
                    obj, resource=resource, **options)
    if group:
        return call(cluster, what, custom.patch_cluster_custom_object, group, version, plural, name, obj,
                    resource=resource, **options)
    # The core group lives under /api/v1, which CustomObjectsApi cannot address: same call, core path.
    path = f"/api/{version}" + (f"/namespaces/{namespace}" if namespaced else "") + f"/{plural}/{name}"
    query = [("fieldManager", FIELD_MANAGER), ("force", force)] + ([("dryRun", "All")] if dry_run else [])
    params = cluster.api.param_serialize(
        method="PATCH", resource_path=path, query_params=query, body=obj, auth_settings=["BearerToken"],
        header_params={"Content-Type": APPLY_PATCH, "Accept": "application/json"},
    )

    def send() -> dict[str, Any]:
        response = cluster.api.call_api(*params)
        response.read()
        return cluster.api.response_deserialize(response, {"200": "object", "201": "object"}).data

    return call(cluster, what, send, resource=resource)
