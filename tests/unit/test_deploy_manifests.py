"""deploy/k8s: every manifest valid against the Kubernetes schemas (strict, offline) and true to the fleet.

Core objects are checked with kubernetes-validate, which ships the Kubernetes JSON schemas; the KEDA
ScaledObject against KEDA's CRD schema vendored in tests/unit/schemas/. Nothing is fetched: the
sockets are shut for every test here. No cluster is involved: this says the manifests are well-formed
and keep the contract, not that they run.
"""

from __future__ import annotations

import copy
import re
import socket
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from contract.celery_config import SOFT_SHUTDOWN_S
from contract.settings import FleetSettings

Doc = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "k8s"
KEDA_CRD = Path(__file__).resolve().parent / "schemas" / "keda-scaledobject-crd.yaml"

COMPONENT_FILES = {"redis.yaml", "worker.yaml", "gateway.yaml", "flower.yaml", "autoscaling.yaml"}
SECRETS_EXAMPLE = "secrets.example.yaml"
KUSTOMIZATION = "kustomization.yaml"  # kustomize's configuration, not an API object: parsed, not validated
CRD_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
NON_ROOT_UID = 10001
IMAGES = {"embedfleet-worker:latest", "embedfleet-gateway:latest", "embedfleet-flower:latest", "redis:7"}
# Settings the fleet reads that FleetSettings does not declare yet; both are EMBED_ settings of the
# contract, added with the code that reads them.
EXTRA_EMBED_VARS = {
    "EMBED_METRICS_PORT",  # the worker's Prometheus port
    "EMBED_API_KEYS",  # the gateway's API keys
}
GATEWAY_COMMAND = ["python", "-m", "producer", "serve", "--host", "0.0.0.0", "--port", "8000"]
VAR_REF = re.compile(r"\$\((\w+)\)")


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


# The oldest Kubernetes these manifests target, and the newest the installed package knows.
K8S_VERSIONS = sorted({"1.30", _major_minor(kubernetes_validate.latest_version())})


def _load(path: Path) -> list[Doc]:
    with path.open() as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


DOCS: list[tuple[str, Doc]] = [
    (path.name, doc) for path in sorted(K8S_DIR.glob("*.yaml")) for doc in _load(path)
]
API_OBJECTS = [(name, doc) for name, doc in DOCS if name != KUSTOMIZATION]
CORE_OBJECTS = [(name, doc) for name, doc in API_OBJECTS if (doc["apiVersion"], doc["kind"]) not in CRD_KINDS]
CRD_OBJECTS = [(name, doc) for name, doc in API_OBJECTS if (doc["apiVersion"], doc["kind"]) in CRD_KINDS]


def _label(name: str, doc: Doc) -> str:
    return f"{name}:{doc['kind']}/{doc['metadata']['name']}"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Schemas come from disk: any attempt to reach the network fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def the(kind: str, name: str) -> Doc:
    found = [doc for _, doc in API_OBJECTS if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name} in deploy/k8s, found {len(found)}"
    return found[0]


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def workloads() -> list[Doc]:
    return [doc for _, doc in API_OBJECTS if doc["kind"] in WORKLOAD_KINDS]


def containers(workload: Doc) -> list[Doc]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def all_containers() -> list[Doc]:
    return [container for workload in workloads() for container in containers(workload)]


def only_container(kind: str, name: str) -> Doc:
    (container,) = pod_spec(the(kind, name))["containers"]
    return container


def env_of(container: Doc) -> dict[str, Doc]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def secret_ref(container: Doc, variable: str) -> tuple[str, str]:
    ref = env_of(container)[variable]["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def flag(args: list[str], name: str) -> str | None:
    """The word after `name` in a command line, or None when `name` is absent."""
    return args[args.index(name) + 1] if name in args else None


def cpus(quantity: str | int | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


# --- files and kustomization ---------------------------------------------------------------------


def test_every_manifest_parses_into_named_objects() -> None:
    names = {path.name for path in K8S_DIR.glob("*.yaml")}
    assert names >= {*COMPONENT_FILES, SECRETS_EXAMPLE, KUSTOMIZATION}
    for name, doc in API_OBJECTS:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), name
        assert doc["metadata"].get("name"), f"{name}: {doc['kind']} without a name"
        assert "namespace" not in doc["metadata"], f"{_label(name, doc)}: the kustomization sets it"


def test_kustomization_applies_every_component_but_not_the_example_secrets() -> None:
    (kustomization,) = (doc for name, doc in DOCS if name == KUSTOMIZATION)
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert sorted(resources) == sorted(COMPONENT_FILES), resources
    assert SECRETS_EXAMPLE not in resources
    assert all((K8S_DIR / resource).is_file() for resource in resources)
    for name, doc in DOCS:
        if doc["kind"] == "Secret":
            assert name == SECRETS_EXAMPLE, f"{_label(name, doc)}: real Secrets are the user's to create"


def test_example_secrets_are_placeholders() -> None:
    secrets = [doc for name, doc in API_OBJECTS if name == SECRETS_EXAMPLE]
    assert secrets and all(doc["kind"] == "Secret" for doc in secrets)
    for secret in secrets:
        assert not secret.get("data"), "use stringData with visible placeholders"
        for key, value in secret["stringData"].items():
            assert "change-me" in value, f"{secret['metadata']['name']}.{key} is not a placeholder"


# --- schemas -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("name", "doc"), CORE_OBJECTS, ids=[_label(n, d) for n, d in CORE_OBJECTS])
def test_core_object_matches_the_kubernetes_schema(name: str, doc: Doc, version: str) -> None:
    """Strict: a misspelt or misplaced field fails as it would with `kubectl apply --validate=strict`."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(part) for part in exc.path)
        pytest.fail(f"{_label(name, doc)} invalid for Kubernetes {version} at {path}: {exc.message}")
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(exc.message)


def test_strict_validation_rejects_unknown_fields() -> None:
    """The check above has teeth: an unknown field fails, it is not ignored."""
    worker = copy.deepcopy(the("Deployment", "embedfleet-worker"))
    pod_spec(worker)["containers"][0]["comand"] = ["celery"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, K8S_VERSIONS[0], strict=True)


def _closed(schema: Any) -> Any:
    """additionalProperties: false wherever a CRD schema lists properties and keeps no unknown fields.

    What the API server does with unknown fields under strict field validation (kubectl's default):
    it refuses them instead of pruning them silently.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: _closed(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = _closed(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [_closed(sub) for sub in out[key]]
    return out


@pytest.fixture(scope="module")
def keda_crd() -> Doc:
    (crd,) = _load(KEDA_CRD)
    return crd


def keda_validator(crd: Doc, api_version: str, kind: str) -> jsonschema.Draft4Validator:
    group, _, version = api_version.partition("/")
    assert (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == (group, kind)
    (served,) = (v for v in crd["spec"]["versions"] if v["name"] == version)
    schema = _closed(served["schema"]["openAPIV3Schema"])
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def test_vendored_keda_crd_is_a_valid_crd(keda_crd: Doc) -> None:
    kubernetes_validate.validate(keda_crd, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize(("name", "doc"), CRD_OBJECTS, ids=[_label(n, d) for n, d in CRD_OBJECTS])
def test_custom_resource_matches_its_crd_schema(name: str, doc: Doc, keda_crd: Doc) -> None:
    validator = keda_validator(keda_crd, doc["apiVersion"], doc["kind"])
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, f"{_label(name, doc)}: {errors}"


def test_crd_validation_rejects_unknown_fields(keda_crd: Doc) -> None:
    scaled = copy.deepcopy(the("ScaledObject", "embedfleet-worker"))
    scaled["spec"]["triggers"][0]["treshold"] = "20"
    validator = keda_validator(keda_crd, scaled["apiVersion"], scaled["kind"])
    assert not validator.is_valid(scaled)


def test_readme_hpa_alternative_matches_the_kubernetes_schema() -> None:
    """The plain-HPA variant in the README is documentation only, but it must be correct."""
    blocks = re.findall(r"```yaml\n(.*?)```", (K8S_DIR / "README.md").read_text(), flags=re.DOTALL)
    hpas = [
        doc
        for block in blocks
        for doc in yaml.safe_load_all(block)
        if doc and doc.get("kind") == "HorizontalPodAutoscaler"
    ]
    assert hpas, "README.md shows no HorizontalPodAutoscaler"
    for hpa in hpas:
        kubernetes_validate.validate(hpa, K8S_VERSIONS[0], strict=True)
        assert hpa["spec"]["scaleTargetRef"]["name"] == "embedfleet-worker"
        assert all(
            m["external"]["metric"]["name"] == "embedfleet_queue_depth" for m in hpa["spec"]["metrics"]
        )
    assert not any(doc["kind"] == "HorizontalPodAutoscaler" for _, doc in API_OBJECTS), "KEDA makes the HPA"


# --- the fleet's contract ------------------------------------------------------------------------


def test_worker_runs_celery_with_a_cpu_limit_and_outlives_its_soft_shutdown() -> None:
    worker = the("Deployment", "embedfleet-worker")
    container = only_container("Deployment", "embedfleet-worker")
    assert container["image"] == "embedfleet-worker:latest"
    assert container["command"][:4] == ["celery", "-A", "worker", "worker"]
    assert pod_spec(worker)["terminationGracePeriodSeconds"] > SOFT_SHUTDOWN_S
    # The prefork pool is sized to whole CPUs of the cgroup quota: a fractional limit wastes the rest.
    limit = cpus(container["resources"]["limits"]["cpu"])
    assert limit >= 1 and limit.is_integer(), limit
    assert container["livenessProbe"]["exec"]["command"] == ["python", "-m", "worker", "health"]
    metrics_port = int(env_of(container)["EMBED_METRICS_PORT"]["value"])
    assert {"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"} in container["ports"]
    assert env_of(container)["EMBED_MODEL_DIR"]["value"] == "/app/artifact"


def test_redis_persists_with_aof_and_requires_a_password() -> None:
    redis = the("Deployment", "embedfleet-redis")
    container = only_container("Deployment", "embedfleet-redis")
    assert container["image"] == "redis:7"
    args = [*container.get("command", []), *container.get("args", [])]
    assert flag(args, "--appendonly") == "yes"
    assert flag(args, "--appendfsync") == "everysec"
    assert flag(args, "--requirepass") == "$(REDIS_PASSWORD)"
    assert secret_ref(container, "REDIS_PASSWORD") == ("embedfleet-redis", "redis-password")
    assert not any("maxmemory" in word for word in args), "a broker Redis must not evict"
    (data,) = (m for m in container["volumeMounts"] if m["mountPath"] == "/data")
    (volume,) = (v for v in pod_spec(redis)["volumes"] if v["name"] == data["name"])
    the("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    service = the("Service", "embedfleet-redis")
    assert [p["port"] for p in service["spec"]["ports"]] == [6379]


@pytest.mark.parametrize("name", ["embedfleet-redis", "embedfleet-flower"])
def test_redis_and_flower_stay_inside_the_cluster(name: str) -> None:
    service = the("Service", name)
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert not any("nodePort" in port for port in service["spec"]["ports"])


def test_services_select_the_pods_of_a_workload() -> None:
    pod_labels = [pod_spec_labels(workload) for workload in workloads()]
    for name, service in ((n, d) for n, d in API_OBJECTS if d["kind"] == "Service"):
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), _label(name, service)


def pod_spec_labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    return labels


def test_flower_requires_basic_auth() -> None:
    container = only_container("Deployment", "embedfleet-flower")
    assert container["image"] == "embedfleet-flower:latest"
    assert container["command"] == ["celery", "-A", "worker", "flower", "--port=5555"]
    assert secret_ref(container, "FLOWER_BASIC_AUTH") == ("embedfleet-flower", "basic-auth")
    assert all("FLOWER_UNAUTHENTICATED_API" not in env_of(c) for c in all_containers())


def test_gateway_serves_with_api_keys_and_probes() -> None:
    container = only_container("Deployment", "embedfleet-gateway")
    assert container["image"] == "embedfleet-gateway:latest"
    assert container["command"] == GATEWAY_COMMAND
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert secret_ref(container, "EMBED_API_KEYS") == ("embedfleet-gateway", "api-keys")


def test_every_embed_variable_is_a_fleet_setting() -> None:
    settings = {f"EMBED_{field.upper()}" for field in FleetSettings.model_fields} | EXTRA_EMBED_VARS
    used = {name for container in all_containers() for name in env_of(container)}
    used |= {key for _, doc in API_OBJECTS if doc["kind"] == "ConfigMap" for key in doc.get("data", {})}
    unknown = {name for name in used if name.startswith("EMBED_")} - settings
    assert not unknown, f"not settings of the fleet: {sorted(unknown)}"
    assert all(
        "EMBED_BROKER_URL" in env_of(c) for c in all_containers() if c["image"].startswith("embedfleet-")
    )


def test_variable_references_resolve() -> None:
    """$(VAR) expands only from env entries declared before it (in command and args: from any)."""
    for container in all_containers():
        declared: list[str] = []
        for entry in container.get("env", []):
            missing = set(VAR_REF.findall(entry.get("value", ""))) - set(declared)
            assert not missing, f"{container['name']}: {entry['name']} uses {missing} before it is declared"
            declared.append(entry["name"])
        words = [*container.get("command", []), *container.get("args", [])]
        missing = {ref for word in words for ref in VAR_REF.findall(word)} - set(declared)
        assert not missing, f"{container['name']}: command uses undeclared {missing}"


def test_secret_references_name_the_example_secrets() -> None:
    examples = {
        (doc["metadata"]["name"], key)
        for name, doc in API_OBJECTS
        if name == SECRETS_EXAMPLE
        for key in doc["stringData"]
    }
    refs = {
        (entry["valueFrom"]["secretKeyRef"]["name"], entry["valueFrom"]["secretKeyRef"]["key"])
        for container in all_containers()
        for entry in container.get("env", [])
        if "secretKeyRef" in entry.get("valueFrom", {})
    }
    assert refs <= examples, f"referenced but missing from {SECRETS_EXAMPLE}: {refs - examples}"


def test_containers_run_as_non_root_without_privilege_escalation() -> None:
    for workload in workloads():
        pod = pod_spec(workload).get("securityContext", {})
        for container in containers(workload):
            context = {**pod, **container.get("securityContext", {})}
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert context.get("runAsNonRoot") is True, where
            assert context.get("runAsUser") == NON_ROOT_UID, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert container["image"] in IMAGES, where


def test_read_only_containers_get_a_writable_tmp() -> None:
    for workload in workloads():
        empty_dirs = {v["name"] for v in pod_spec(workload).get("volumes", []) if "emptyDir" in v}
        for container in containers(workload):
            if container.get("securityContext", {}).get("readOnlyRootFilesystem"):
                tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
                assert tmp and tmp[0]["name"] in empty_dirs, f"{container['name']}: no emptyDir on /tmp"


def test_keda_scales_the_workers_on_both_lanes() -> None:
    scaled = the("ScaledObject", "embedfleet-worker")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == the("Deployment", "embedfleet-worker")["metadata"]["name"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert spec["minReplicaCount"] == 1
    assert spec["maxReplicaCount"] > spec["minReplicaCount"]
    assert spec["cooldownPeriod"] > 0
    lanes: dict[str, float] = {}
    for trigger in spec["triggers"]:
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        assert "embedfleet_queue_depth" in query
        (lane,) = re.findall(r'lane="(\w+)"', query)
        lanes[lane] = float(trigger["metadata"]["threshold"])
        assert trigger["metadata"]["serverAddress"].startswith("http")
    assert lanes.keys() == {"bulk", "interactive"}
    assert 0 < lanes["interactive"] < lanes["bulk"], "interactive work must scale out sooner"
