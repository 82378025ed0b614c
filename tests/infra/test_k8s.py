"""The Kubernetes manifests in infra/k8s: schemas (KubeRay's included), wiring and entrypoints.

Everything here is offline (conftest.py refuses every socket connection) and fast:

- core kinds validate against the Kubernetes JSON schemas shipped in the `kubernetes-validate`
  package, in strict mode (an unknown field fails);
- the KubeRay kinds (RayCluster, RayJob: custom resources, absent from those schemas) validate
  against the openAPIV3Schema of KubeRay's own CRDs (copies in schemas/, pinned to the release
  infra/README.md installs), as strictly as the API server applies them: an unknown field fails,
  in the pod templates too;
- RayJobs give their nodes back (a deadline, the cluster deleted an hour after the end), and the
  retraining schedule has a time zone;
- the wiring: Secrets, ConfigMaps and Services that manifests name exist, every Ray process runs
  with token authentication, every pipeline pod sees MinIO, its credentials and MLflow;
- every entrypoint (RayJobs, the retraining CronJob) names a script and a config in the repo,
  its overrides validate against the stage's config schema, and the cluster it runs on can host it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import shlex
import shutil
import subprocess
import tomllib
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "infra" / "k8s"

# Kubernetes version whose schemas the manifests must satisfy (kubernetes-validate ships 1.25+).
K8S_VERSION = "1.32.0"

RAY_AUTH_SECRET = "vos-ray-auth"
RAY_AUTH_TOKEN_PATH = "/etc/ray-auth/auth_token"
PROJECT_IMAGE = "vos-pipeline"
# What every pipeline pod needs to reach object storage and MLflow.
PIPELINE_ENV = {
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MLFLOW_TRACKING_URI",
}


# -- reading the manifests ------------------------------------------------------------------


@dataclass
class Manifest:
    path: Path
    index: int
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.doc["kind"]

    @property
    def name(self) -> str:
        metadata = self.doc["metadata"]
        return metadata.get("name") or metadata["generateName"]

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}[{self.index}] {self.kind}/{self.name}"


def load_manifests() -> list[Manifest]:
    manifests = []
    for path in sorted(K8S_DIR.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        manifests += [Manifest(path, index, doc) for index, doc in enumerate(docs)]
    return manifests


MANIFESTS = load_manifests()
RAY_KINDS = {"RayCluster", "RayJob"}
CORE_MANIFESTS = [m for m in MANIFESTS if m.kind not in RAY_KINDS]
RAY_MANIFESTS = [m for m in MANIFESTS if m.kind in RAY_KINDS]


def of_kind(kind: str) -> list[Manifest]:
    return [m for m in MANIFESTS if m.kind == kind]


def secrets_example() -> dict[str, set[str]]:
    """Secret name -> its keys, from secrets.example.yaml."""
    return {m.name: set(m.doc["stringData"]) for m in of_kind("Secret")}


def config_maps() -> dict[str, set[str]]:
    """ConfigMap name -> its keys: the manifests' ConfigMaps and kustomize's generated ones."""
    found = {m.name: set(m.doc.get("data", {})) for m in of_kind("ConfigMap")}
    for generator in kustomization().get("configMapGenerator", []):
        found[generator["name"]] = {Path(file).name for file in generator.get("files", [])}
    return found


def project_config() -> dict[str, str]:
    """The vos-env ConfigMap every pipeline pod reads (config.yaml)."""
    return next(m for m in of_kind("ConfigMap") if m.name == "vos-env").doc["data"]


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())


# -- Kubernetes schemas ---------------------------------------------------------------------


def test_the_schemas_ship_with_the_package():
    """The chosen version's schemas are files of the installed package: nothing is fetched."""
    versions = kubernetes_validate.utils.all_versions()
    assert any(version.startswith(K8S_VERSION.rsplit(".", 1)[0]) for version in versions), versions
    assert definitions_file().is_file()


@pytest.mark.parametrize("manifest", CORE_MANIFESTS, ids=str)
def test_core_manifest_validates_against_the_kubernetes_schema(manifest):
    try:
        kubernetes_validate.validate(manifest.doc, K8S_VERSION, strict=True)
    except kubernetes_validate.utils.ValidationError as error:
        pytest.fail(f"{manifest}: {error.message} at {'.'.join(map(str, error.path))}")


def test_schema_validation_rejects_a_misspelt_field():
    """The strict schemas catch the typos this suite is for (and the validator really runs)."""
    deployment = next(m for m in of_kind("Deployment")).doc
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.utils.ValidationError, match="imagePullPolicyy"):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def definitions_file() -> Path:
    package = Path(kubernetes_validate.__file__).parent
    return package / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict" / "_definitions.json"


class KubernetesTypes:
    """The Kubernetes types (e.g. io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta) for jsonschema:
    `{"$ref": f"{base}#/$defs/<type>"}` resolves in `registry`."""

    def __init__(self) -> None:
        definitions = json.loads(definitions_file().read_text())
        self.base = definitions["$id"]
        resource = referencing.Resource.from_contents(definitions)
        self.registry = referencing.Registry().with_resource(self.base, resource)


@pytest.fixture(scope="module")
def kubernetes_types() -> KubernetesTypes:
    return KubernetesTypes()


# -- KubeRay schemas ------------------------------------------------------------------------

# The CRDs of the KubeRay release infra/README.md installs, vendored in schemas/ (README.md there).
KUBERAY_VERSION = "1.6.2"
SCHEMAS = Path(__file__).parent / "schemas"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
RAY_API_VERSION = "ray.io/v1"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
# The CRDs are large (2 MB): libyaml's loader reads them in well under a second.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD schema as the API server applies it under strict field validation (kubectl's
    default): a field the schema does not declare is an error, not silently dropped. So every
    object with neither additionalProperties nor x-kubernetes-preserve-unknown-fields is closed;
    `nullable` admits null."""
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [strict(sub) for sub in schema[key]]
    is_open = "additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields")
    if schema.get("type") == "object" and not is_open:
        schema["additionalProperties"] = False
    if schema.get("nullable") and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    return schema


class KubeRaySchemas:
    """Validates RayCluster and RayJob manifests against the ray.io/v1 openAPIV3Schema of the
    vendored CRDs (pod templates included: the CRDs embed the Kubernetes types), and their
    metadata against the Kubernetes ObjectMeta, which the CRDs leave to the API server. CEL rules
    (x-kubernetes-validations) are not evaluated; in KubeRay 1.6.2 they guard only
    deletionStrategy and managedBy, which these manifests do not set."""

    def __init__(self, types: KubernetesTypes) -> None:
        group, version = RAY_API_VERSION.split("/")
        self.validators = {}
        for kind, file in CRD_FILES.items():
            crd = yaml.load((SCHEMAS / file).read_text(), Loader=YAML_LOADER)
            assert (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == (group, kind), file
            (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
            schema = strict(served["schema"]["openAPIV3Schema"])
            schema["properties"] |= {
                "apiVersion": {"const": RAY_API_VERSION},
                "kind": {"const": kind},
                "metadata": {"$ref": f"{types.base}#/$defs/{OBJECT_META}"},
            }
            self.validators[kind] = jsonschema.Draft202012Validator(schema, registry=types.registry)

    def errors(self, doc: dict[str, Any]) -> list[str]:
        validator = self.validators.get(doc.get("kind"))
        if validator is None:
            return [f"kind {doc.get('kind')!r}: no vendored KubeRay CRD"]
        return sorted(
            f"{'.'.join(map(str, error.absolute_path)) or '(top level)'}: {error.message}"
            for error in validator.iter_errors(doc)
        )


@pytest.fixture(scope="module")
def kuberay_schemas(kubernetes_types) -> KubeRaySchemas:
    return KubeRaySchemas(kubernetes_types)


def test_vendored_crds_are_the_pinned_release_of_the_operator_installed():
    """schemas/ holds, unchanged, the CRDs of the KubeRay release infra/README.md installs."""
    install = re.search(r"kuberay/kuberay-operator --version (\S+)", README.read_text())
    assert install and install.group(1) == KUBERAY_VERSION, (
        "infra/README.md installs another KubeRay"
    )
    notes = (SCHEMAS / "README.md").read_text()
    assert f"v{KUBERAY_VERSION}" in notes, "schemas/README.md names another KubeRay tag"
    pinned = {name: digest for digest, name in re.findall(r"([0-9a-f]{64})  (\S+\.yaml)", notes)}
    assert pinned.keys() == set(CRD_FILES.values()), pinned
    for name, digest in pinned.items():
        actual = hashlib.sha256((SCHEMAS / name).read_bytes()).hexdigest()
        assert actual == digest, f"schemas/{name} differs from the copy schemas/README.md pins"


@pytest.mark.parametrize("manifest", RAY_MANIFESTS, ids=str)
def test_kuberay_manifest_validates_against_the_crd_schema(manifest, kuberay_schemas):
    errors = kuberay_schemas.errors(manifest.doc)
    assert not errors, f"{manifest}:\n  " + "\n  ".join(errors)


@pytest.mark.parametrize(
    ("kind", "where", "mistake", "expected"),
    [
        ("RayCluster", "spec", {"enableInTreeAutoScaling": True}, "'enableInTreeAutoScaling' was"),
        ("RayCluster", "spec.workerGroupSpecs.0", {"minReplica": 1}, "'minReplica' was unexpected"),
        (
            "RayCluster",
            "spec.headGroupSpec.template.spec.containers.0",
            {"imagee": "x"},
            "'imagee' was unexpected",
        ),
        ("RayCluster", "spec.authOptions", {"mode": "tokens"}, "'tokens' is not one of"),
        ("RayCluster", "spec.workerGroupSpecs.0", {"maxReplicas": "4"}, "'4' is not of type"),
        ("RayJob", "spec", {"activeDeadlineSecond": 60}, "'activeDeadlineSecond' was unexpected"),
        ("RayJob", "metadata", {"label": {}}, "'label' was unexpected"),
        ("RayJob", "", {"apiVersion": "ray.io/v1alpha1"}, "'ray.io/v1' was expected"),
    ],
)
def test_kuberay_schema_catches_mistakes(kind, where, mistake, expected, kuberay_schemas):
    doc = yaml.safe_load(yaml.safe_dump(of_kind(kind)[0].doc))
    node = doc
    for part in filter(None, where.split(".")):
        node = node[int(part)] if part.isdigit() else node[part]
    node.update(mistake)
    errors = kuberay_schemas.errors(doc)
    assert any(expected in error for error in errors), errors


# -- what the pieces need ---------------------------------------------------------------------


def ray_cluster_specs() -> list[tuple[Manifest, dict[str, Any]]]:
    """Every Ray cluster described: the RayCluster and each RayJob's own cluster."""
    specs = [(m, m.doc["spec"]) for m in of_kind("RayCluster")]
    specs += [(m, m.doc["spec"]["rayClusterSpec"]) for m in of_kind("RayJob")]
    return specs


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod spec in a manifest, at any depth (Deployment, CronJob, Ray groups, ...)."""
    found = []
    if isinstance(doc, dict):
        if "containers" in doc and isinstance(doc["containers"], list):
            found.append(doc)
        for value in doc.values():
            found += pod_specs(value)
    elif isinstance(doc, list):
        for value in doc:
            found += pod_specs(value)
    return found


def project_pods() -> list[tuple[Manifest, dict[str, Any], dict[str, Any]]]:
    """(manifest, pod spec, container) for every container running the project image."""
    found = []
    for manifest in MANIFESTS:
        for pod in pod_specs(manifest.doc):
            for container in pod["containers"]:
                if container["image"].split(":")[0] == PROJECT_IMAGE:
                    found.append((manifest, pod, container))
    return found


def env_names(container: dict[str, Any]) -> set[str]:
    """Variables a container gets: its env and the keys of the ConfigMaps/Secrets in envFrom."""
    names = {item["name"] for item in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names |= config_maps()[source["configMapRef"]["name"]]
        if "secretRef" in source:
            names |= secrets_example()[source["secretRef"]["name"]]
    return names


def env_value(container: dict[str, Any], name: str) -> str | None:
    return next(
        (item.get("value") for item in container.get("env", []) if item["name"] == name), None
    )


def test_raycluster_has_an_autoscaled_gpu_worker_group():
    (cluster,) = of_kind("RayCluster")
    spec = cluster.doc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    gpu_groups = [group for group in spec["workerGroupSpecs"] if gpu_limit(group) > 0]
    assert gpu_groups, "no worker group asks for nvidia.com/gpu"
    for group in gpu_groups:
        assert group["minReplicas"] < group["maxReplicas"], (
            f"{group['groupName']}: no room to scale"
        )
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]


def gpu_limit(group: dict[str, Any]) -> int:
    containers = group["template"]["spec"]["containers"]
    return sum(int(c["resources"].get("limits", {}).get("nvidia.com/gpu", 0)) for c in containers)


def locked_version(package: str) -> str:
    """The version of `package` in uv.lock (what the project image installs)."""
    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text())
    return next(p["version"] for p in lock["package"] if p["name"] == package)


def test_versions_match_the_lock_file():
    """rayVersion is the image's Ray (KubeRay builds its commands from it); the MLflow server
    runs the same MLflow as the clients in the image."""
    for manifest, cluster in ray_cluster_specs():
        assert cluster["rayVersion"] == locked_version("ray"), manifest
    (mlflow,) = [m for m in of_kind("Deployment") if m.name == "vos-mlflow"]
    image = mlflow.doc["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.split(":")[1].removeprefix("v").split("-")[0] == locked_version("mlflow"), image


def test_gpu_requests_are_whole_and_equal_to_limits():
    """Extended resources must have requests == limits, or Kubernetes rejects the pod."""
    for manifest, _, container in project_pods():
        resources = container.get("resources", {})
        limit = resources.get("limits", {}).get("nvidia.com/gpu")
        request = resources.get("requests", {}).get("nvidia.com/gpu", limit)
        assert request == limit, f"{manifest}: nvidia.com/gpu request {request} != limit {limit}"


@pytest.mark.parametrize(("manifest", "cluster"), ray_cluster_specs(), ids=lambda x: str(x)[:60])
def test_every_ray_process_uses_token_auth_from_the_secret(manifest, cluster):
    assert cluster["authOptions"] == {"mode": "token", "secretName": RAY_AUTH_SECRET}, manifest
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    for group in groups:
        pod = group["template"]["spec"]
        for container in pod["containers"]:
            assert_token_auth(f"{manifest} {container['name']}", container, pod.get("volumes", []))
    if cluster.get("enableInTreeAutoscaling"):
        head_volumes = cluster["headGroupSpec"]["template"]["spec"]["volumes"]
        assert_token_auth(f"{manifest} autoscaler", cluster["autoscalerOptions"], head_volumes)


def test_retraining_job_submits_with_the_token():
    (cronjob,) = of_kind("CronJob")
    pod = cronjob.doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert_token_auth(str(cronjob), pod["containers"][0], pod["volumes"])


def assert_token_auth(where: str, container: dict[str, Any], volumes: list[dict[str, Any]]) -> None:
    assert env_value(container, "RAY_AUTH_MODE") == "token", f"{where}: RAY_AUTH_MODE is not token"
    assert env_value(container, "RAY_AUTH_TOKEN_PATH") == RAY_AUTH_TOKEN_PATH, where
    token_dir, token_file = RAY_AUTH_TOKEN_PATH.rsplit("/", 1)
    mount = next(
        (m for m in container.get("volumeMounts", []) if m["mountPath"] == token_dir), None
    )
    assert mount is not None, f"{where}: nothing mounted at {token_dir}"
    volume = next(v for v in volumes if v["name"] == mount["name"])
    assert volume.get("secret", {}).get("secretName") == RAY_AUTH_SECRET, f"{where}: {volume}"
    assert token_file in secrets_example()[RAY_AUTH_SECRET]


def test_every_pipeline_pod_reaches_storage_and_mlflow():
    pods = project_pods()
    assert len(pods) >= 4, "expected Ray heads, workers and the retraining job"
    for manifest, _, container in pods:
        missing = PIPELINE_ENV - env_names(container)
        assert not missing, f"{manifest} {container['name']}: no {sorted(missing)}"


def image_uid() -> int:
    """The numeric user the project image runs as (the Dockerfile's last USER)."""
    dockerfile = (REPO_ROOT / "infra" / "docker" / "Dockerfile").read_text()
    return int(re.findall(r"^USER (\d+)", dockerfile, flags=re.MULTILINE)[-1])


def test_project_pods_run_as_the_image_user():
    """The image's own user runs every project pod (its home, its files), never root."""
    for manifest, pod, _ in project_pods():
        context = pod.get("securityContext", {})
        assert context.get("runAsNonRoot") is True, manifest
        assert context.get("runAsUser") == image_uid(), f"{manifest}: runAsUser != {image_uid()}"


def test_every_pod_meets_the_restricted_pod_security_basics():
    """Non-root, default seccomp profile, no privilege escalation, no capabilities: what the
    namespace's `restricted` warning level checks, the autoscaler KubeRay adds included."""
    for manifest, cluster in ray_cluster_specs():
        if cluster.get("enableInTreeAutoscaling"):
            security = cluster["autoscalerOptions"].get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, f"{manifest} autoscaler"
            assert security.get("capabilities") == {"drop": ["ALL"]}, f"{manifest} autoscaler"
    for manifest in MANIFESTS:
        for pod in pod_specs(manifest.doc):
            context = pod.get("securityContext", {})
            assert context.get("runAsNonRoot") is True, f"{manifest}: runAsNonRoot"
            assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, (
                f"{manifest}: seccomp"
            )
            for container in pod["containers"] + pod.get("initContainers", []):
                security = container.get("securityContext", {})
                where = f"{manifest} {container['name']}"
                assert security.get("allowPrivilegeEscalation") is False, where
                assert security.get("capabilities") == {"drop": ["ALL"]}, where


def secret_references(doc: Any) -> list[tuple[str, str | None]]:
    """(secret, key or None) for every Secret a manifest reads, at any depth."""
    found: list[tuple[str, str | None]] = []
    if isinstance(doc, dict):
        if "secretKeyRef" in doc:
            found.append((doc["secretKeyRef"]["name"], doc["secretKeyRef"]["key"]))
        if "secretRef" in doc:
            found.append((doc["secretRef"]["name"], None))
        if "secret" in doc and isinstance(doc["secret"], dict) and "secretName" in doc["secret"]:
            found.append((doc["secret"]["secretName"], None))
        if "authOptions" in doc:
            found.append((doc["authOptions"]["secretName"], "auth_token"))
        for value in doc.values():
            found += secret_references(value)
    elif isinstance(doc, list):
        for value in doc:
            found += secret_references(value)
    return found


def test_every_secret_read_is_described_in_secrets_example():
    described = secrets_example()
    assert described, "secrets.example.yaml describes no Secret"
    for manifest in MANIFESTS:
        for name, key in secret_references(manifest.doc):
            assert name in described, f"{manifest}: Secret {name} is not in secrets.example.yaml"
            assert key is None or key in described[name], (
                f"{manifest}: Secret {name} has no key {key}"
            )


def test_secrets_example_holds_placeholders_only():
    for manifest in of_kind("Secret"):
        assert manifest.path.name == "secrets.example.yaml", (
            f"{manifest}: a Secret outside the example"
        )
        for key, value in manifest.doc["stringData"].items():
            assert "CHANGE_ME" in value, f"{manifest}: {key} looks like a real value"


def test_credentials_come_only_from_secrets():
    """No literal password, secret key or token in an env value: those come from Secrets."""
    sensitive = ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY")
    for manifest in MANIFESTS:
        for pod in pod_specs(manifest.doc):
            for container in pod["containers"] + pod.get("initContainers", []):
                for item in container.get("env", []):
                    name = item["name"]
                    if any(word in name for word in sensitive) and not name.endswith("_PATH"):
                        assert "valueFrom" in item, f"{manifest}: {name} is set literally"


def test_every_config_map_read_exists():
    known = config_maps()
    for manifest in MANIFESTS:
        for pod in pod_specs(manifest.doc):
            for container in pod["containers"] + pod.get("initContainers", []):
                for source in container.get("envFrom", []):
                    if "configMapRef" in source:
                        assert source["configMapRef"]["name"] in known, manifest
                for item in container.get("env", []):
                    ref = item.get("valueFrom", {}).get("configMapKeyRef")
                    if ref:
                        assert ref["key"] in known.get(ref["name"], set()), f"{manifest}: {ref}"
            for volume in pod.get("volumes", []):
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in known, f"{manifest}: {volume}"


def service_ports() -> dict[str, set[int]]:
    """Service name -> ports: the manifests' Services and KubeRay's head Service per RayCluster."""
    ports = {m.name: {p["port"] for p in m.doc["spec"]["ports"]} for m in of_kind("Service")}
    for cluster in of_kind("RayCluster"):
        head = cluster.doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        ports[f"{cluster.name}-head-svc"] = {p["containerPort"] for p in head["ports"]}
    return ports


def test_every_service_address_points_to_a_service_port():
    address = re.compile(r"\b(vos-[a-z0-9-]+?)(?:\.vos(?:\.svc(?:\.cluster\.local)?)?)?:(\d+)\b")
    known = service_ports()
    checked = 0
    for manifest in MANIFESTS:
        for host, port in address.findall(yaml.safe_dump(manifest.doc)):
            assert int(port) in known.get(host, set()), f"{manifest}: no Service port {host}:{port}"
            checked += 1
    assert checked >= 5


def test_mlflow_serves_artifacts_and_accepts_its_clients():
    (deployment,) = [m for m in of_kind("Deployment") if m.name == "vos-mlflow"]
    container = deployment.doc["spec"]["template"]["spec"]["containers"][0]
    args = dict(arg.removeprefix("--").partition("=")[::2] for arg in container["args"])
    assert "serve-artifacts" in args
    bucket = project_config()["VOS_BUCKET"]
    assert args["artifacts-destination"].startswith(f"s3://{bucket}/")
    backend = env_value(container, "MLFLOW_BACKEND_STORE_URI")
    assert backend.startswith("postgresql") and "$(POSTGRES_PASSWORD)" in backend
    host = project_config()["MLFLOW_TRACKING_URI"].split("://", 1)[1].rstrip("/")
    assert host in args["allowed-hosts"].split(","), f"MLflow would reject Host {host}"


def test_retraining_cronjob_runs_once_and_never_overlaps():
    (cronjob,) = of_kind("CronJob")
    assert cronjob.doc["spec"]["concurrencyPolicy"] == "Forbid"
    container = cronjob.doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["vos", "retrain", "--once", "--config", "configs/retrain.yaml"]
    head = f"{of_kind('RayCluster')[0].name}-head-svc"
    # Jobs API for fine-tuning; Ray Client for the steps that run Ray tasks from the pod.
    assert env_value(container, "RAY_API_SERVER_ADDRESS") == f"http://{head}:8265"
    assert env_value(container, "RAY_ADDRESS") is None  # every step goes through the Jobs API


def test_retraining_schedule_names_its_time_zone():
    (cronjob,) = of_kind("CronJob")
    zone = cronjob.doc["spec"].get("timeZone")
    assert zone, f"{cronjob}: no timeZone: the schedule follows the controller's local time"
    known = zoneinfo.available_timezones()
    if not known:
        pytest.skip("no time zone database on this machine")
    assert zone in known, f"{cronjob}: timeZone {zone!r} is not an IANA time zone"


# The cluster of a finished RayJob stays this long, for its logs.
RAYJOB_CLUSTER_KEPT_S = 3600


@pytest.mark.parametrize("manifest", of_kind("RayJob"), ids=str)
def test_rayjob_gives_its_nodes_back(manifest):
    """A deadline (a hung job would hold its nodes, GPUs included, for ever), and the cluster
    deleted after the job, but late enough to read a failure's logs."""
    spec = manifest.doc["spec"]
    assert spec.get("activeDeadlineSeconds", 0) > 0, f"{manifest}: no activeDeadlineSeconds"
    # KubeRay applies ttlSecondsAfterFinished only with shutdownAfterJobFinishes (and rejects
    # a TTL without it); deletionStrategy rules would replace both.
    assert spec.get("shutdownAfterJobFinishes") is True, f"{manifest}: the cluster is never deleted"
    assert spec.get("ttlSecondsAfterFinished", 0) >= RAYJOB_CLUSTER_KEPT_S, (
        f"{manifest}: the cluster is deleted before {RAYJOB_CLUSTER_KEPT_S} s: too soon to read logs"
    )


# -- entrypoints ------------------------------------------------------------------------------


@dataclass
class Entrypoint:
    where: str
    script: str
    config: str
    overrides: list[str]


def parse_python_entrypoint(where: str, command: str) -> Entrypoint:
    argv = shlex.split(command)
    assert argv[0] == "python" and argv[2] == "--config", (
        f"{where}: unexpected entrypoint {command!r}"
    )
    return Entrypoint(where, script=argv[1], config=argv[3], overrides=argv[4:])


RAYJOB_ENTRYPOINTS = [
    parse_python_entrypoint(str(m), m.doc["spec"]["entrypoint"]) for m in of_kind("RayJob")
]


def test_rayjobs_cover_generate_pretrain_and_finetune():
    scripts = {entrypoint.script for entrypoint in RAYJOB_ENTRYPOINTS}
    assert scripts == {"pipelines/generate.py", "pipelines/pretrain.py", "pipelines/finetune.py"}


@pytest.mark.parametrize("entrypoint", RAYJOB_ENTRYPOINTS, ids=lambda e: e.script)
def test_rayjob_entrypoint_names_files_in_the_repo(entrypoint):
    assert (REPO_ROOT / entrypoint.script).is_file(), f"{entrypoint.where}: no {entrypoint.script}"
    assert (REPO_ROOT / entrypoint.config).is_file(), f"{entrypoint.where}: no {entrypoint.config}"
    for override in entrypoint.overrides:
        key, sep, value = override.partition("=")
        assert sep and key and value, f"{entrypoint.where}: {override!r} is not key=value"
        if "s3://" in value:
            bucket = project_config()["VOS_BUCKET"]
            assert f"s3://{bucket}/" in value, f"{entrypoint.where}: {override} is not in {bucket}"


# The config schema each stage script validates its config with (imported only when needed:
# pipelines.generate imports torch).
STAGE_SCHEMAS = {
    "pipelines/generate.py": ("pipelines.generate", "GenerateConfig"),
    "pipelines/pretrain.py": ("training.config", "PretrainConfig"),
    "pipelines/finetune.py": ("training.config", "FinetuneConfig"),
}


def stage_schema(script: str) -> type:
    module, name = STAGE_SCHEMAS[script]
    return getattr(importlib.import_module(module), name)


def load_entrypoint_config(entrypoint: Entrypoint):
    """The entrypoint's config file with its overrides, validated as the stage would."""
    from core.config import load_config

    schema = stage_schema(entrypoint.script)
    return load_config(schema, REPO_ROOT / entrypoint.config, entrypoint.overrides)


@pytest.mark.parametrize("entrypoint", RAYJOB_ENTRYPOINTS, ids=lambda e: e.script)
def test_rayjob_config_and_overrides_validate(entrypoint):
    config = load_entrypoint_config(entrypoint)
    storage = getattr(getattr(config, "run", None), "storage_path", None)
    if storage is not None:
        assert storage.startswith("s3://"), f"{entrypoint.where}: runs are not stored on S3"


def test_rayjobs_chain_generate_into_pretrain():
    """The pretraining RayJob reads the shard set the generation RayJob writes."""
    by_script = {entrypoint.script: entrypoint for entrypoint in RAYJOB_ENTRYPOINTS}
    generate = load_entrypoint_config(by_script["pipelines/generate.py"])
    pretrain = load_entrypoint_config(by_script["pipelines/pretrain.py"])
    written = f"{generate.output.set_url.rstrip('/')}/manifest.json"  # docs/interfaces.md
    assert written in pretrain.data.manifests, (
        f"generate writes {written}; pretrain reads {pretrain.data.manifests}"
    )


def training_entrypoints() -> list[tuple[str, Entrypoint, dict[str, Any]]]:
    """(where, entrypoint, cluster spec) for every training job and the cluster it runs on:
    each RayJob on its own cluster, and the README's `ray job submit` on the RayCluster."""
    found = []
    for manifest in of_kind("RayJob"):
        entrypoint = parse_python_entrypoint(str(manifest), manifest.doc["spec"]["entrypoint"])
        found.append((str(manifest), entrypoint, manifest.doc["spec"]["rayClusterSpec"]))
    (cluster,) = of_kind("RayCluster")
    for entrypoint in list(found):
        found.append((f"{cluster} <- {entrypoint[1].script}", entrypoint[1], cluster.doc["spec"]))
    return [item for item in found if item[1].script != "pipelines/generate.py"]


@pytest.mark.parametrize(
    ("where", "entrypoint", "cluster"), training_entrypoints(), ids=lambda x: str(x)[:50]
)
def test_training_config_fits_its_ray_cluster(where, entrypoint, cluster):
    """The cluster can host the config's workers (else the job waits for resources forever)."""
    compute = load_entrypoint_config(entrypoint).compute
    room = 0
    for group in cluster["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpus, cpus = int(limits.get("nvidia.com/gpu", 0)), cpu_cores(limits["cpu"])
        if compute.use_gpu and gpus < compute.gpus_per_worker:
            continue
        per_pod = int(cpus // compute.cpus_per_worker)
        if compute.use_gpu:
            per_pod = min(per_pod, int(gpus // compute.gpus_per_worker))
        room += per_pod * group["maxReplicas"]
    assert room >= compute.num_workers, (
        f"{where}: {compute.num_workers} workers of {compute.cpus_per_worker} CPU"
        f"{' + GPU' if compute.use_gpu else ''} do not fit (room for {room})"
    )


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_retraining_entrypoint_names_a_command_and_config_in_the_repo():
    from vos.cli import COMMANDS

    (cronjob,) = of_kind("CronJob")
    command = cronjob.doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0][
        "command"
    ]
    program, subcommand, *rest = command
    assert program == "vos" and subcommand in COMMANDS, command
    module_file = REPO_ROOT / (COMMANDS[subcommand][0].replace(".", "/") + ".py")
    assert module_file.is_file(), f"vos {subcommand} runs {module_file}, which does not exist"
    config = REPO_ROOT / rest[rest.index("--config") + 1]
    assert config.is_file(), f"{cronjob}: no {config.relative_to(REPO_ROOT)}"
    assert isinstance(yaml.safe_load(config.read_text()), dict), f"{config}: not a YAML mapping"


# -- kustomize ----------------------------------------------------------------------------------


def test_kustomization_lists_the_platform_and_nothing_else():
    listed = {REPO_ROOT / "infra" / "k8s" / name for name in kustomization()["resources"]}
    top_level = {path for path in K8S_DIR.glob("*.yaml") if path.name != "kustomization.yaml"}
    expected = top_level - {K8S_DIR / "secrets.example.yaml"}
    assert listed == expected, "kustomization.yaml resources differ from infra/k8s/*.yaml"
    assert kustomization()["namespace"] == "vos"
    for generator in kustomization().get("configMapGenerator", []):
        for file in generator["files"]:
            assert (K8S_DIR / file).is_file(), file


def test_every_manifest_is_in_the_namespace():
    (namespace,) = of_kind("Namespace")
    for manifest in MANIFESTS:
        if manifest.kind != "Namespace":
            assert manifest.doc["metadata"].get("namespace") == namespace.name, manifest


def test_minio_setup_script_is_valid_shell():
    result = subprocess.run(
        ["sh", "-n", str(K8S_DIR / "minio-setup.sh")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_minio_setup_policy_allows_the_bucket_only_and_no_service_accounts():
    """The application user reads and writes its bucket, and cannot create or widen service
    accounts (the mitigation for GHSA-jjjj-jwhf-8rgr, infra/README.md)."""
    script = (K8S_DIR / "minio-setup.sh").read_text()
    body = re.search(r"<<POLICY\n(.*?)\nPOLICY\n", script, flags=re.DOTALL).group(1)
    statements = json.loads(body.replace("$VOS_BUCKET", "vos"))["Statement"]
    allowed = [s for s in statements if s["Effect"] == "Allow"]
    assert allowed and all(
        set(s["Resource"]) <= {"arn:aws:s3:::vos", "arn:aws:s3:::vos/*"} for s in allowed
    ), allowed
    denied = {action for s in statements if s["Effect"] == "Deny" for action in s["Action"]}
    assert {"admin:CreateServiceAccount", "admin:UpdateServiceAccount"} <= denied, statements


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with its kustomize) is not installed"
)
def test_kustomize_build_renders_valid_manifests(kuberay_schemas):
    """`kubectl kustomize` (offline, local files) renders what `kubectl apply -k` would send."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    for doc in rendered:
        if doc["kind"] in RAY_KINDS:
            assert not kuberay_schemas.errors(doc), kuberay_schemas.errors(doc)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = sorted(doc["kind"] for doc in rendered)
    assert kinds.count("ConfigMap") == 2 and "RayCluster" in kinds and "CronJob" in kinds, kinds


# -- the README -------------------------------------------------------------------------------

README = REPO_ROOT / "infra" / "README.md"


def test_readme_creates_exactly_the_secrets_the_manifests_read():
    text = README.read_text().replace("\\\n", " ")
    created = {}
    for match in re.finditer(r"kubectl -n vos create secret generic (\S+)(.*)", text):
        created[match.group(1)] = set(re.findall(r"--from-literal=(\w+)=", match.group(2)))
    assert created == secrets_example()


def test_readme_names_only_files_that_exist():
    paths = set(
        re.findall(r"\b(?:infra|configs|pipelines)/[\w./-]+\.(?:ya?ml|py|sh)\b", README.read_text())
    )
    paths |= {f"infra/{p}" for p in re.findall(r"`((?:k8s|docker)/[\w./-]+)`", README.read_text())}
    assert len(paths) > 10
    missing = sorted(path for path in paths if not (REPO_ROOT / path).exists())
    assert not missing, f"infra/README.md names files that do not exist: {missing}"


def test_readme_submits_what_the_rayjobs_run():
    """The README's `ray job submit` commands and the RayJobs run the same entrypoints."""
    text = README.read_text().replace("\\\n", " ")
    submitted = {
        " ".join(shlex.split(command))
        for command in re.findall(r"ray job submit .*? -- (python pipelines/\S+ .*)", text)
    }
    for entrypoint in RAYJOB_ENTRYPOINTS:
        if entrypoint.script != "pipelines/finetune.py":
            command = shlex.join(
                ["python", entrypoint.script, "--config", entrypoint.config, *entrypoint.overrides]
            )
            assert command in submitted, f"the README does not submit {command!r}"
