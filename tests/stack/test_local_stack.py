"""`vos stack up | status | down`: idempotent, healthy, and leaves no process behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from vos.stack import LocalStack, StackPorts

VOS = [sys.executable, "-m", "vos.cli"]


def vos_stack(*args: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*VOS, "stack", *args, "--root", str(root)], capture_output=True, text=True, timeout=300
    )


def gcs_servers(stack: LocalStack) -> list[psutil.Process]:
    return [p for p in stack.processes() if p.name() == "gcs_server"]


@pytest.fixture
def stack_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stack")


def test_stack_up_twice_is_one_stack_and_down_leaves_nothing(stack_root):
    ports = StackPorts.free()
    up_args = [
        "up",
        "--ray-port", str(ports.ray),
        "--dashboard-port", str(ports.dashboard),
        "--mlflow-port", str(ports.mlflow),
        "--num-cpus", "1",
    ]  # fmt: skip
    stack = LocalStack(stack_root)
    try:
        first = vos_stack(*up_args, root=stack_root)
        assert first.returncode == 0, first.stdout + first.stderr
        pids_after_first = {p.pid for p in stack.processes()}
        assert len(gcs_servers(stack)) == 1

        second = vos_stack(*up_args, root=stack_root)
        assert second.returncode == 0, second.stdout + second.stderr
        assert len(gcs_servers(stack)) == 1
        assert json.loads((stack_root / "stack.json").read_text())["ports"]["ray"] == ports.ray
        # The second `up` started nothing new: the long-lived servers are the same processes.
        assert {p.pid for p in stack.processes() if p.name() == "gcs_server"} <= pids_after_first

        status = vos_stack("status", root=stack_root)
        assert status.returncode == 0, status.stdout
        assert f"127.0.0.1:{ports.mlflow}" in status.stdout

        env = vos_stack("env", root=stack_root).stdout
        assert f"export RAY_API_SERVER_ADDRESS=http://127.0.0.1:{ports.dashboard}" in env
        assert "export RAY_AUTH_MODE=token" in env
    finally:
        down = vos_stack("down", root=stack_root)
    assert down.returncode == 0
    leftovers = [p for p in pids_after_first if psutil.pid_exists(p) and _alive(p)]
    assert leftovers == [], f"processes left behind: {leftovers}"
    assert vos_stack("status", root=stack_root).returncode == 1


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_stack_refuses_a_taken_port(stack_root, s3_endpoint):
    taken = int(s3_endpoint.url.rsplit(":", 1)[1])  # moto listens there
    result = vos_stack("up", "--mlflow-port", str(taken), "--ray-port", str(StackPorts.free().ray),
                       "--dashboard-port", str(StackPorts.free().dashboard), root=stack_root)  # fmt: skip
    vos_stack("down", root=stack_root)
    assert result.returncode == 1
    assert f"port {taken} (mlflow)" in result.stdout
