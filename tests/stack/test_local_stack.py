"""`vos stack up | status | down`: idempotent, on loopback only, and leaves no process behind.

One fresh stack goes through `up`, `up` again, `status`, `env` and `down` once (in the module's
`cycle` fixture); each test checks one guarantee on what that cycle saw. The stack's processes
are found here without the stack's own bookkeeping: every process whose command line names the
stack (its root, its Ray temp dir or its GCS port), with all their descendants.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from vos.stack import LocalStack, StackPorts

VOS = [sys.executable, "-m", "vos.cli"]


def vos_stack(*args: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*VOS, "stack", *args, "--root", str(root)], capture_output=True, text=True, timeout=300
    )


@dataclass
class StackCycle:
    root: Path
    ports: StackPorts
    first_up: subprocess.CompletedProcess
    second_up: subprocess.CompletedProcess
    status: subprocess.CompletedProcess
    env: subprocess.CompletedProcess
    down: subprocess.CompletedProcess
    status_after_down: subprocess.CompletedProcess
    saved_state: dict
    tree_after_first_up: dict[int, str]  # pid -> command line
    tree_after_second_up: dict[int, str]
    listening: list[tuple[str, str, int]]  # (process name, address, port)
    alive_after_down: list[str]


def stack_tree(stack: LocalStack, gcs_port: int) -> dict[int, psutil.Process]:
    """Every process that names this stack on its command line, and all their descendants."""
    names = (str(stack.root), str(stack.ray_temp_dir))
    gcs = re.compile(rf"address=\S+:{gcs_port}\b")  # e.g. the Ray Client server, left to init
    ours = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    tree: dict[int, psutil.Process] = {}
    for process in psutil.process_iter():
        try:
            line = " ".join(process.cmdline())
            if process.pid in ours or not (any(n in line for n in names) or gcs.search(line)):
                continue
            tree[process.pid] = process
            tree.update({child.pid: child for child in process.children(recursive=True)})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return tree


def command_lines(tree: dict[int, psutil.Process]) -> dict[int, str]:
    lines = {}
    for pid, process in tree.items():
        try:
            lines[pid] = " ".join(process.cmdline())[:300]
        except psutil.NoSuchProcess:
            continue
    return lines


def listening_sockets(tree: dict[int, psutil.Process]) -> list[tuple[str, str, int]]:
    lines = command_lines(tree)
    return [
        (lines.get(conn.pid, "?")[:80], conn.laddr.ip, conn.laddr.port)
        for conn in psutil.net_connections("inet")
        if conn.status == psutil.CONN_LISTEN and conn.pid in tree
    ]


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, an IPv6 socket on 127.0.0.1
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def gcs_servers(tree: dict[int, str]) -> set[int]:
    return {pid for pid, line in tree.items() if line.split(" ")[0].endswith("/gcs_server")}


def still_running(tree: dict[int, psutil.Process]) -> list[str]:
    alive = []
    for process in tree.values():
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{process.pid} {process.name()} {' '.join(process.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.fixture(scope="module")
def cycle(tmp_path_factory) -> StackCycle:
    """A fresh stack through `up`, `up`, `status`, `env` and `down`, and what each step saw."""
    root = tmp_path_factory.mktemp("stack")
    ports = StackPorts.free()
    up_args = [
        "up",
        "--ray-port", str(ports.ray),
        "--dashboard-port", str(ports.dashboard),
        "--mlflow-port", str(ports.mlflow),
        "--num-cpus", "1",
    ]  # fmt: skip
    stack = LocalStack(root)
    tree: dict[int, psutil.Process] = {}
    try:
        first_up = vos_stack(*up_args, root=root)
        tree_after_first_up = command_lines(stack_tree(stack, ports.ray))
        second_up = vos_stack(*up_args, root=root)
        saved_state = json.loads(stack.state_file.read_text()) if stack.state_file.is_file() else {}
        status = vos_stack("status", root=root)
        env = vos_stack("env", root=root)
        tree = stack_tree(stack, ports.ray)  # the agents have started by now
        tree_after_second_up = command_lines(tree)
        listening = listening_sockets(tree)
    finally:
        down = vos_stack("down", root=root)
    return StackCycle(
        root=root,
        ports=ports,
        first_up=first_up,
        second_up=second_up,
        status=status,
        env=env,
        down=down,
        status_after_down=vos_stack("status", root=root),
        saved_state=saved_state,
        tree_after_first_up=tree_after_first_up,
        tree_after_second_up=tree_after_second_up,
        listening=listening,
        alive_after_down=still_running(tree),
    )


def test_up_twice_is_one_stack(cycle):
    assert cycle.first_up.returncode == 0, cycle.first_up.stdout + cycle.first_up.stderr
    assert cycle.second_up.returncode == 0, cycle.second_up.stdout + cycle.second_up.stderr
    assert cycle.saved_state["ports"]["ray"] == cycle.ports.ray
    gcs_first = gcs_servers(cycle.tree_after_first_up)
    assert len(gcs_first) == 1
    assert gcs_servers(cycle.tree_after_second_up) == gcs_first  # the second `up` started none


def test_status_and_env_name_the_loopback_addresses(cycle):
    assert cycle.status.returncode == 0, cycle.status.stdout
    assert f"127.0.0.1:{cycle.ports.mlflow}" in cycle.status.stdout
    env = cycle.env.stdout
    assert f"export RAY_ADDRESS=127.0.0.1:{cycle.ports.ray}" in env
    assert f"export RAY_API_SERVER_ADDRESS=http://127.0.0.1:{cycle.ports.dashboard}" in env
    assert "export RAY_AUTH_MODE=token" in env
    assert cycle.status_after_down.returncode == 1


def test_every_listening_socket_of_the_stack_is_on_loopback(cycle):
    ports = {port for _, _, port in cycle.listening}
    assert {cycle.ports.ray, cycle.ports.dashboard, cycle.ports.mlflow} <= ports, cycle.listening
    exposed = [socket for socket in cycle.listening if not is_loopback(socket[1])]
    assert exposed == [], f"listening beyond loopback: {exposed}"


def test_down_leaves_no_process_behind(cycle):
    assert cycle.down.returncode == 0, cycle.down.stdout + cycle.down.stderr
    seen = " ".join(cycle.tree_after_second_up.values())
    assert "ray.util.client.server" in seen and "mlflow server" in seen  # the check sees them
    assert not (cycle.root / "stack.json").exists()
    assert cycle.alive_after_down == [], "processes left behind:\n" + "\n".join(
        cycle.alive_after_down
    )


def test_down_keeps_the_ray_session_logs(cycle):
    kept = list((cycle.root / "logs" / "ray").glob("session_*/gcs_server.out"))
    assert len(kept) == 1, sorted(p.name for p in (cycle.root / "logs").rglob("*"))[:20]
    assert (cycle.root / "logs" / "mlflow.log").is_file()


def test_stack_refuses_a_taken_port(tmp_path, s3_endpoint):
    taken = int(s3_endpoint.url.rsplit(":", 1)[1])  # moto listens there
    result = vos_stack("up", "--mlflow-port", str(taken), "--ray-port", str(StackPorts.free().ray),
                       "--dashboard-port", str(StackPorts.free().dashboard), root=tmp_path)  # fmt: skip
    vos_stack("down", root=tmp_path)
    assert result.returncode == 1
    assert f"port {taken} (mlflow)" in result.stdout
