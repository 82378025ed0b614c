"""Ray from the project's side: one way to join a cluster, the environment every job and task
is given, and many tasks run with a bound on how many are in flight.

`connect()` joins the cluster in `address`, else in RAY_ADDRESS (also what `ray job submit`
sets), else starts a Ray on this machine for the life of the process. Only where the storage
endpoint and the tracking server are (`FORWARDED_ENV`) is passed on to jobs and tasks, never
credentials: every node gets those from its own environment (the AWS chain, Kubernetes Secrets).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

FORWARDED_ENV = (
    "MLFLOW_TRACKING_URI",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "VOS_CACHE",  # where an evaluation set on object storage is mirrored
    "VOS_STORAGE",  # the default storage root (evaluation output, promotion locks)
    "VOS_GIT_COMMIT",  # the commit a job was submitted from (its upload has no .git)
    "VOS_GIT_DIRTY",
)

Item = TypeVar("Item")


def forwarded_env() -> dict[str, str]:
    """The `FORWARDED_ENV` variables set in this process."""
    return {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}


def runtime_env() -> dict[str, Any] | None:
    """A Ray runtime environment that carries `forwarded_env()` (None when there is nothing)."""
    env = forwarded_env()
    return {"env_vars": env} if env else None


def connect(address: str | None = None, num_cpus: int | None = None, tries: int = 3) -> bool:
    """Join a cluster, or start a Ray here; True when this call started or joined Ray (so the
    caller shuts it down), False when the process was already connected."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING")
        return True
    for attempt in range(1, tries + 1):
        # On a busy machine the raylet can give up waiting for its agents (a fixed 15 s wait,
        # ray-project/ray#65983); a second try usually starts.
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING")
            return True
        except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception here
            ray.shutdown()
            if attempt == tries or "timed out during startup" not in str(err):
                raise
            print(f"Ray did not start ({err}); trying again", file=sys.stderr)
    return True


def as_completed(
    submit: Callable[[Item], Any], items: Iterable[Item], in_flight: int
) -> Iterator[tuple[Item, Any]]:
    """Submit a Ray task per item, at most `in_flight` at a time; yield (item, object ref) as
    each finishes. The caller `ray.get`s the ref, and decides what a failed task means."""
    import ray

    queue, running = list(items), {}
    while queue or running:
        while queue and len(running) < in_flight:
            item = queue.pop(0)
            running[submit(item)] = item
        done, _ = ray.wait(list(running), num_returns=1)
        yield running.pop(done[0]), done[0]
