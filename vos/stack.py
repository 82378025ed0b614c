"""The local stack: what a cluster provides, on one machine, on loopback only.

    Ray head    `ray start --head`: GCS, raylet, dashboard/job server, agents and Ray Client
                server, every one listening on 127.0.0.1 only; token auth
    MLflow      `mlflow server` on 127.0.0.1 with a SQLite backend store (the registry needs a
                database) and a local artifact root served through the server
    storage     a local folder, used as the default storage URL

Everything lives under one state folder (default `.vos/stack`): `stack.json` (ports, pids),
the Ray auth token, the MLflow database and artifacts, logs and the storage folder. Ray's own
temp dir is under /tmp (its socket paths must stay short) and is deleted by `down`, which
first moves each Ray session's logs to `logs/ray/<session>/`; `down` keeps `logs/`.

`up` is idempotent (a healthy stack is left as it is). Every process the stack starts carries
`VOS_STACK_PROCESS=<part>@<root>` in its environment, and so does everything those start, the
Ray Client server too, which `ray start` leaves to init. (Ray retitles its workers and agents,
which overwrites what the system shows of their environment; they are children of the raylet
and the dashboard, which carry the mark.) `down` stops those processes and their descendants,
and again until none is left; never `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

DEFAULT_ROOT = Path(".vos/stack")
RAY_START_ATTEMPTS = 3
# In the environment of every process of a stack: "<part>@<root>", part "ray" or "mlflow".
MEMBER_ENV = "VOS_STACK_PROCESS"
# Ray turns a loopback address (127.0.0.1, localhost) into the machine's address, for the node
# address of `ray start --node-ip-address=127.0.0.1` (to which its servers then bind) and for a
# client's `ray.init(address="127.0.0.1:port")`, unless it is told that the cluster is this one
# machine (ray/_private/services.py: resolve_ip_for_localhost). Servers and clients both need
# this, and Ray reads it when it is imported: export it before `import ray`.
LOOPBACK_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@dataclass
class StackPorts:
    """Loopback ports of the stack (defaults are Ray's and MLflow's usual ones).

    Ray's internal ports (client server, dashboard agent) are picked free at `up` unless given.
    """

    ray: int = 6379
    dashboard: int = 8265
    mlflow: int = 5000
    ray_client: int | None = None
    dashboard_agent: int | None = None

    @classmethod
    def free(cls) -> StackPorts:
        """Ports that are free now (for tests and for a second stack beside a first)."""
        return cls(*(free_port() for _ in range(3)))

    def with_internal_ports(self) -> StackPorts:
        return StackPorts(
            self.ray,
            self.dashboard,
            self.mlflow,
            self.ray_client or free_port(),
            self.dashboard_agent or free_port(),
        )


@dataclass
class StackState:
    """What `up` started, saved in `stack.json` so `status` and `down` can find it."""

    root: str
    ports: StackPorts
    num_cpus: int | None = None
    mlflow_pid: int | None = None
    started_at: float = field(default_factory=time.time)

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.ports.ray}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.dashboard}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.mlflow}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class LocalStack:
    """Start, inspect and stop the local stack rooted at `root`."""

    def __init__(self, root: str | Path = DEFAULT_ROOT):
        self.root = Path(root).resolve()

    # -- paths -------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.root / "stack.json"

    @property
    def token_file(self) -> Path:
        return self.root / "ray_auth_token"

    @property
    def storage_dir(self) -> Path:
        return self.root / "storage"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def mlflow_store_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def ray_logs_dir(self) -> Path:
        return self.logs_dir / "ray"

    @property
    def ray_temp_dir(self) -> Path:
        # Ray's unix socket paths must stay short (about 107 bytes), so not under `root`.
        digest = hashlib.sha1(str(self.root).encode()).hexdigest()[:10]
        return Path("/tmp") / f"vos-ray-{digest}"

    # -- state -------------------------------------------------------------------------------
    def load_state(self) -> StackState | None:
        if not self.state_file.is_file():
            return None
        data = json.loads(self.state_file.read_text())
        data["ports"] = StackPorts(**data["ports"])
        return StackState(**data)

    def _save_state(self, state: StackState) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2))
        tmp.replace(self.state_file)

    def client_env(self, state: StackState | None = None) -> dict[str, str]:
        """Environment for clients of this stack (`ray job submit`, `ray.init`, MLflow)."""
        state = state or self.load_state()
        if state is None:
            return {}
        return {
            "RAY_ADDRESS": state.gcs_address,
            "RAY_API_SERVER_ADDRESS": state.dashboard_url,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_file),
            **LOOPBACK_RAY_ENV,
            "MLFLOW_TRACKING_URI": state.mlflow_url,
            "VOS_STORAGE": str(self.storage_dir),
        }

    # -- health ------------------------------------------------------------------------------
    def ray_healthy(self, state: StackState) -> bool:
        request = urllib.request.Request(f"{state.dashboard_url}/api/version")
        if self.token_file.is_file():
            request.add_header("Authorization", f"Bearer {self.token_file.read_text().strip()}")
        return _http_ok(request)

    def mlflow_healthy(self, state: StackState) -> bool:
        return _http_ok(urllib.request.Request(f"{state.mlflow_url}/health"))

    def status(self) -> dict[str, dict[str, object]]:
        state = self.load_state()
        if state is None:
            return {}
        return {
            "ray": {
                "address": state.gcs_address,
                "dashboard": state.dashboard_url,
                "healthy": self.ray_healthy(state),
            },
            "mlflow": {"address": state.mlflow_url, "healthy": self.mlflow_healthy(state)},
            "storage": {"address": str(self.storage_dir), "healthy": self.storage_dir.is_dir()},
        }

    # -- up / down ---------------------------------------------------------------------------
    def up(
        self, ports: StackPorts | None = None, num_cpus: int | None = None, timeout: float = 300
    ) -> StackState:
        """Bring the stack up; parts that are already healthy are left running."""
        state = self.load_state()
        if state is None:
            ports = (ports or StackPorts()).with_internal_ports()
            state = StackState(root=str(self.root), ports=ports, num_cpus=num_cpus)
        for folder in (self.root, self.storage_dir, self.logs_dir, self.root / "mlflow-artifacts"):
            folder.mkdir(parents=True, exist_ok=True)
        if not self.token_file.is_file():
            self.token_file.write_text(secrets.token_hex(32))
            self.token_file.chmod(0o600)

        start_ray = not self.ray_healthy(state)
        start_mlflow = not self.mlflow_healthy(state)
        if start_ray:
            self._stop_ray()
        if start_mlflow:
            self._stop_mlflow()
        _check_ports_free(state.ports, ray=start_ray, mlflow=start_mlflow)
        if start_ray:
            self._start_ray(state)
        if start_mlflow:
            state.mlflow_pid = self._start_mlflow(state)
        self._save_state(state)
        _wait_until(lambda: self.ray_healthy(state), timeout, "Ray dashboard", self.logs_dir)
        _wait_until(lambda: self.mlflow_healthy(state), timeout, "MLflow server", self.logs_dir)
        return state

    def down(self) -> list[int]:
        """Stop this stack's processes; returns the pids that were stopped."""
        stopped = self._stop_ray() + self._stop_mlflow()
        self.state_file.unlink(missing_ok=True)
        return stopped

    def processes(self) -> list[psutil.Process]:
        """Every live process that belongs to this stack (Ray's and MLflow's)."""
        return _with_descendants(self._members("ray") + self._members("mlflow"))

    def _start_ray(self, state: StackState) -> None:
        command = [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={state.ports.ray}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={state.ports.dashboard}",
            f"--ray-client-server-port={state.ports.ray_client}",
            f"--dashboard-agent-listen-port={state.ports.dashboard_agent}",
            "--include-dashboard=true",
            f"--temp-dir={self.ray_temp_dir}",
            "--disable-usage-stats",
        ]
        if state.num_cpus is not None:
            command.append(f"--num-cpus={state.num_cpus}")
        # `ray start` gives the raylet a fixed 30 s to register; on a busy machine that can
        # pass, so a failed start is cleaned up and tried again.
        log_path = self.logs_dir / "ray-start.log"
        for attempt in range(1, RAY_START_ATTEMPTS + 1):
            with log_path.open("a") as log:
                log.write(f"--- ray start, attempt {attempt}\n")
                log.flush()
                result = subprocess.run(
                    command, env=self._server_env("ray"), stdout=log, stderr=log
                )
            if result.returncode == 0:
                return
            self._stop_ray()
        raise RuntimeError(f"stack: `ray start` failed {RAY_START_ATTEMPTS} times; see {log_path}")

    def _start_mlflow(self, state: StackState) -> int:
        command = [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--backend-store-uri",
            self.mlflow_store_uri,
            "--artifacts-destination",
            str(self.root / "mlflow-artifacts"),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(state.ports.mlflow),
            "--workers",
            "1",
        ]
        log = (self.logs_dir / "mlflow.log").open("a")
        log.write(f"--- mlflow server, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        log.flush()
        env = self._server_env("mlflow")
        # MLflow 3 starts a pool of job consumers for its GenAI features; this stack needs none.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        process = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return process.pid

    def _server_env(self, part: str) -> dict[str, str]:
        """A server's environment: the project's interpreter first on PATH, token auth on,
        loopback only, and this stack's mark (inherited by everything the server starts)."""
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN_PATH"] = str(self.token_file)
        env.update(LOOPBACK_RAY_ENV)
        env[MEMBER_ENV] = f"{part}@{self.root}"
        env.pop("RAY_ADDRESS", None)
        return env

    def _members(self, part: str) -> list[psutil.Process]:
        """The live processes that carry this stack's mark for `part`."""
        mark = f"{part}@{self.root}"
        found = []
        for process in psutil.process_iter():
            try:
                if process.pid != os.getpid() and process.environ().get(MEMBER_ENV) == mark:
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    def _stop_ray(self) -> list[int]:
        # Processes of a stack started before the mark existed mention the temp dir.
        stopped = _stop_all(
            lambda: self._members("ray") + _processes_mentioning(str(self.ray_temp_dir))
        )
        self._keep_ray_logs()
        shutil.rmtree(self.ray_temp_dir, ignore_errors=True)
        return stopped

    def _stop_mlflow(self) -> list[int]:
        # An MLflow server started before the mark existed names the stack's database.
        return _stop_all(
            lambda: self._members("mlflow") + _processes_mentioning(self.mlflow_store_uri)
        )

    def _keep_ray_logs(self) -> None:
        """Move each Ray session's logs out of the temp dir `down` deletes, into logs/ray/."""
        for session in self.ray_temp_dir.glob("session_*"):
            logs, kept = session / "logs", self.ray_logs_dir / session.name
            if session.is_symlink() or not logs.is_dir() or kept.exists():
                continue  # `session_latest` is a link to one of the others
            self.ray_logs_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(str(logs), str(kept))


def _check_ports_free(ports: StackPorts, ray: bool, mlflow: bool) -> None:
    """Fail before starting anything when a port the stack needs is taken."""
    wanted = {name: port for name, port in asdict(ports).items() if name != "mlflow"} if ray else {}
    if mlflow:
        wanted["mlflow"] = ports.mlflow
    for name, port in wanted.items():
        if port_in_use(port):
            raise RuntimeError(
                f"stack: port {port} ({name}) on 127.0.0.1 is taken by another program; "
                "stop it or start the stack with other ports"
            )


def _http_ok(request: urllib.request.Request) -> bool:
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def _wait_until(check, timeout: float, what: str, logs_dir: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"stack: {what} did not become healthy in {timeout:.0f} s; see {logs_dir}"
            )
        time.sleep(0.5)


def _processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(text in part for part in process.info["cmdline"] or []):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _with_descendants(processes: list[psutil.Process]) -> list[psutil.Process]:
    everything: dict[int, psutil.Process] = {}
    for process in processes:
        try:
            everything[process.pid] = process
            for child in process.children(recursive=True):
                everything[child.pid] = child
        except psutil.NoSuchProcess:
            continue
    return list(everything.values())


def _stop_all(find, rounds: int = 3) -> list[int]:
    """Terminate what `find()` returns, with descendants, until it returns nothing (a process
    being stopped can still start another)."""
    stopped: list[int] = []
    for _ in range(rounds):
        processes = _with_descendants(find())
        if not processes:
            break
        stopped += _terminate(processes)
    return sorted(set(stopped))


def _terminate(processes: list[psutil.Process], grace: float = 10) -> list[int]:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=grace)
    return [process.pid for process in processes]
