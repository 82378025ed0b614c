"""Where Ray puts its object store, on every Ray node that infra/ describes.

Ray (2.60) sizes the object store of a node started without `object-store-memory` in
ray/_private/utils.py, resolve_object_store_memory:

    object_store_memory = int(available_memory_bytes * DEFAULT_OBJECT_STORE_MEMORY_PROPORTION)  # 0.3
    capped at min(DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES,                         # 200 GB
                  max(REQUIRE_SHM_SIZE_THRESHOLD, int(get_shared_memory_bytes() * 0.95)))  # 10 GB

and ray/_private/services.py, determine_plasma_store_config, puts it in /dev/shm only
`if shm_avail >= object_store_memory`; otherwise in /tmp ("This will harm performance!").

The tests call Ray's own resolve_object_store_memory with /dev/shm's size given, and copy only that
last comparison. The memory a node sees is at most its container's memory limit (Ray reads the
cgroup), so 30 % of the limit is the largest store Ray picks; with no limit (docker compose), the
host's memory could be anything, so the cap is what counts. /dev/shm is a memory-backed emptyDir
mounted there (its tmpfs is the sizeLimit, at most the pod's memory limit); KubeRay mounts one
sized to the container's memory when the pod template has none (common/pod.go, addEmptyDir);
docker's is `shm_size`, 64 MiB by default.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"
DEV_SHM = "/dev/shm"
DOCKER_DEFAULT_SHM = 64 * 2**20
ANY_HOST = 10**15  # bytes of memory: larger than any node, so Ray's caps decide


@dataclass
class RayNode:
    where: str
    memory_limit: int | None  # the container's memory limit; None: the host's memory
    shm_bytes: int  # the size of /dev/shm
    object_store_memory: int | None = None  # given to `ray start`, else Ray's default


def object_store(node: RayNode, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """(object store bytes, its directory) as Ray decides them on that (Linux) node."""
    import ray._private.utils as ray_utils

    with monkeypatch.context() as patch:
        patch.setattr(sys, "platform", "linux")
        patch.setattr(ray_utils, "get_shared_memory_bytes", lambda: node.shm_bytes)
        size = ray_utils.resolve_object_store_memory(
            node.memory_limit or ANY_HOST, node.object_store_memory
        )
    return size, DEV_SHM if node.shm_bytes >= size else "/tmp"


# -- quantities ------------------------------------------------------------------------------

K8S_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6}
K8S_SUFFIXES |= {"G": 10**9, "T": 10**12, "": 1}


def k8s_bytes(quantity: str | int) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i|[kMGT]|)", str(quantity))
    if not match:
        raise ValueError(f"not a Kubernetes memory quantity this test reads: {quantity!r}")
    return int(float(match.group(1)) * K8S_SUFFIXES[match.group(2)])


def docker_bytes(size: str | int) -> int:
    """docker's byte values (shm_size, mem_limit): k, m, g, t are powers of 1024."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", str(size).lower())
    if not match:
        raise ValueError(f"not a docker byte value: {size!r}")
    return int(float(match.group(1)) * 1024 ** " kmgt".index(match.group(2) or " "))


# -- the Ray nodes of the Kubernetes manifests -------------------------------------------------


def kubernetes_nodes() -> list[RayNode]:
    nodes = []
    for path in sorted((INFRA / "k8s").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") not in ("RayCluster", "RayJob"):
                continue
            cluster = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
            name = doc["metadata"].get("name") or doc["metadata"]["generateName"]
            where = f"{path.relative_to(REPO_ROOT)} {doc['kind']}/{name}"
            groups = [("head", cluster["headGroupSpec"])]
            groups += [(g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]
            nodes += [kubernetes_node(f"{where} {label}", group) for label, group in groups]
    return nodes


def kubernetes_node(where: str, group: dict[str, Any]) -> RayNode:
    pod = group["template"]["spec"]
    container = pod["containers"][0]  # KubeRay's Ray container
    limits = container.get("resources", {}).get("limits", {})
    memory = k8s_bytes(limits["memory"]) if "memory" in limits else None
    given = group.get("rayStartParams", {}).get("object-store-memory")
    return RayNode(where, memory, shm_size(where, pod, container), int(given) if given else None)


def shm_size(where: str, pod: dict[str, Any], container: dict[str, Any]) -> int:
    mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == DEV_SHM), None)
    if mount is None:  # KubeRay adds a memory-backed emptyDir sized to the container's memory
        resources = container.get("resources", {})
        memory = (
            resources.get("limits", {}).get("memory") or resources.get("requests", {})["memory"]
        )
        return k8s_bytes(memory)
    volume = next(v for v in pod.get("volumes", []) if v["name"] == mount["name"])
    empty_dir = volume.get("emptyDir") or {}
    assert empty_dir.get("medium") == "Memory", f"{where}: /dev/shm is not a memory-backed emptyDir"
    pod_memory = [c.get("resources", {}).get("limits", {}).get("memory") for c in pod["containers"]]
    sizes = [k8s_bytes(empty_dir["sizeLimit"])] if "sizeLimit" in empty_dir else []
    if all(pod_memory):  # the tmpfs is never larger than the pod's memory limit
        sizes.append(sum(k8s_bytes(memory) for memory in pod_memory))
    assert sizes, f"{where}: /dev/shm has no sizeLimit and the pod no memory limit"
    return min(sizes)


# -- the Ray nodes of docker compose -----------------------------------------------------------


def compose_nodes() -> list[RayNode]:
    nodes = []
    for path in sorted(INFRA.glob("docker-compose*.yml")):
        for name, service in yaml.safe_load(path.read_text())["services"].items():
            command = service.get("command", [])
            argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
            if argv[:2] != ["ray", "start"]:
                continue
            limit = service.get("mem_limit") or (
                service.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
            )
            given = ray_start_option(argv, "--object-store-memory")
            nodes.append(
                RayNode(
                    f"{path.relative_to(REPO_ROOT)} {name}",
                    docker_bytes(limit) if limit else None,
                    docker_bytes(service.get("shm_size", DOCKER_DEFAULT_SHM)),
                    int(given) if given else None,
                )
            )
    return nodes


def ray_start_option(argv: list[str], option: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg.startswith(f"{option}="):
            return arg.split("=", 1)[1]
        if arg == option:
            return argv[index + 1]
    return None


RAY_NODES = kubernetes_nodes() + compose_nodes()


def test_every_ray_node_is_found():
    """The RayCluster's head and 2 groups, 3 RayJobs' head and workers, the compose head."""
    assert len(RAY_NODES) >= 10, [node.where for node in RAY_NODES]
    assert any("docker-compose" in node.where for node in RAY_NODES)


@pytest.mark.parametrize("node", RAY_NODES, ids=lambda node: node.where)
def test_object_store_is_in_dev_shm(node, monkeypatch):
    size, directory = object_store(node, monkeypatch)
    assert directory == DEV_SHM, (
        f"{node.where}: Ray's object store ({size / 2**30:.2f} GiB) is larger than /dev/shm "
        f"({node.shm_bytes / 2**30:.2f} GiB), so it goes to /tmp: size /dev/shm to fit it"
    )


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        # Ray's default: 30 % of 16 GiB (4.8 GiB) does not fit a 4 GiB /dev/shm.
        (RayNode("16Gi pod, 4Gi /dev/shm", 16 * 2**30, 4 * 2**30), "/tmp"),
        (RayNode("16Gi pod, 5Gi /dev/shm", 16 * 2**30, 5 * 2**30), DEV_SHM),
        # Given explicitly, the size is Ray's no matter the memory.
        (RayNode("4Gi given, 3Gi /dev/shm", 16 * 2**30, 3 * 2**30, 4 * 2**30), "/tmp"),
        # Any host, 8 GiB /dev/shm: the default can reach 10 GB (the floor of Ray's cap).
        (RayNode("any host, 8Gi /dev/shm", None, 8 * 2**30), "/tmp"),
    ],
    ids=lambda value: value.where if isinstance(value, RayNode) else value,
)
def test_rule_tells_dev_shm_from_tmp(node, expected, monkeypatch):
    """The rule the test above applies catches what it is for (the sizes before issue 12)."""
    assert object_store(node, monkeypatch)[1] == expected


@pytest.mark.parametrize(
    ("text", "parse", "expected"),
    [
        ("16Gi", k8s_bytes, 16 * 2**30),
        ("512Mi", k8s_bytes, 512 * 2**20),
        ("2G", k8s_bytes, 2 * 10**9),
        ("16gb", docker_bytes, 16 * 2**30),
        ("64m", docker_bytes, 64 * 2**20),
        (1024, docker_bytes, 1024),
    ],
)
def test_sizes_are_read_as_kubernetes_and_docker_do(text, parse, expected):
    assert parse(text) == expected
