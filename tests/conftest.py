"""Real services on 127.0.0.1 for the tests: an S3 endpoint, an MLflow server, a Ray cluster.

Nothing here mocks Ray, MLflow or S3 inside the process: the S3 endpoint is moto's server in
its own process (as s3fs's own tests do), MLflow is `mlflow server` with a SQLite store and
Ray is `ray start --head` with token auth, both started through the project's own local stack.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from vos.stack import LOOPBACK_RAY_ENV, LocalStack, StackPorts, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]

# Ray reads its token-auth settings (and whether 127.0.0.1 stays 127.0.0.1) once, when it is
# first imported, and test modules import it while they are collected, before any fixture runs.
# So the test stack's folder (and with it its token file) is chosen here, and exported before
# anything imports Ray.
TEST_STACK_ROOT = Path(tempfile.mkdtemp(prefix="vos-test-stack-"))
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN_PATH"] = str(LocalStack(TEST_STACK_ROOT).token_file)
os.environ.update(LOOPBACK_RAY_ENV)
DAVIS_SAMPLE = Path(
    os.environ.get("VOS_TEST_DAVIS", REPO_ROOT.parent / "shared" / "data" / "davis2016-sample")
)

# Credentials for the local S3 endpoint only; set before anything starts so that every
# process started later (Ray workers, MLflow) inherits them.
_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@dataclass
class S3Endpoint:
    url: str

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url)

    def make_bucket(self, name: str) -> str:
        """Create (or empty) a bucket and return its `s3://` URL."""
        import boto3

        bucket = boto3.resource("s3", endpoint_url=self.url).Bucket(name)
        if bucket.creation_date is None:
            bucket.create()
        else:
            bucket.objects.all().delete()
        return f"s3://{name}"


@dataclass
class MlflowServer:
    uri: str
    root: Path


@dataclass
class RayCluster:
    gcs_address: str
    dashboard_url: str
    stack: LocalStack


def _wait_http(url: str, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    detail = f"; log: {log.read_text()[-2000:]}" if log and log.exists() else ""
    raise RuntimeError(f"{what} did not start at {url}{detail}")


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 in its own process; sets the standard AWS_* variables."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="vos-moto-")) / "moto.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    saved = {key: os.environ.get(key) for key in [*_S3_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(_S3_ENV)
    os.environ["AWS_ENDPOINT_URL"] = url
    try:
        _wait_http(f"{url}/moto-api/", 120, "moto S3 server", log)
        yield S3Endpoint(url=url)
    finally:
        process.terminate()
        process.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def local_stack(s3_endpoint):
    """The project's own local stack (Ray head + MLflow server) on free loopback ports.

    Started after the S3 endpoint so that Ray workers and MLflow inherit its variables.
    """
    stack = LocalStack(TEST_STACK_ROOT)
    state = stack.up(ports=StackPorts.free(), num_cpus=4)
    saved = {key: os.environ.get(key) for key in stack.client_env(state)}
    os.environ.update(stack.client_env(state))
    try:
        yield stack
    finally:
        stack.down()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(TEST_STACK_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(local_stack):
    """A real `mlflow server` with a SQLite backend store; MLFLOW_TRACKING_URI points to it."""
    state = local_stack.load_state()
    return MlflowServer(uri=state.mlflow_url, root=local_stack.root)


@pytest.fixture(scope="session")
def ray_cluster(local_stack):
    """A `ray start --head` cluster with token auth; RAY_ADDRESS and the token are exported."""
    state = local_stack.load_state()
    return RayCluster(
        gcs_address=state.gcs_address, dashboard_url=state.dashboard_url, stack=local_stack
    )


@pytest.fixture(scope="session")
def davis_root() -> Path:
    """The shared DAVIS 2016 sample (`../shared/data/davis2016-sample`); skips when absent."""
    if not (DAVIS_SAMPLE / "JPEGImages" / "480p").is_dir():
        pytest.skip(f"DAVIS sample not found at {DAVIS_SAMPLE} (set VOS_TEST_DAVIS to point to it)")
    return DAVIS_SAMPLE
