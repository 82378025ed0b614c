"""The lease (single-flight, renewed, taken over when stale) and the retraining ledger
(resumable record), on local and S3 storage."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from core import storage
from core.lease import (
    EXIT_LEASE_LOST,
    EXIT_STALE_LEASE,
    KEEP_RECORDS,
    Lease,
    LeaseHeld,
    LeaseLost,
    exit_status,
)
from orchestration.ledger import Cycle, Ledger

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "s3"])
def state_url(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "state")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = endpoint.make_bucket(f"lease-{int(time.time() * 1000) % 10**9}")
    return f"{bucket}/state"


def test_one_of_many_racing_triggers_gets_the_lease(state_url):
    url = f"{state_url}/lease"
    winners, losers = race_for(url, triggers=6)
    assert len(winners) == 1
    assert len(losers) == 5
    assert all("already running" in message for message in losers)

    winners[0].release()
    with Lease(url, ttl_s=60) as lease:  # free again once released, and not called stale
        assert lease.took_over is None


def test_old_records_are_pruned(state_url):
    url = f"{state_url}/lease"
    for _ in range(KEEP_RECORDS + 3):
        with Lease(url, ttl_s=60):
            pass
    fs, path = storage.filesystem(url)
    assert len(fs.ls(path, refresh=True)) == KEEP_RECORDS


def test_renewing_keeps_the_lease_past_its_ttl(state_url):
    url = f"{state_url}/lease"
    with Lease(url, ttl_s=2).held(renew_every=0.25) as holder:
        time.sleep(4.5)  # over twice the ttl
        with pytest.raises(LeaseHeld, match="already running") as busy:
            Lease(url, ttl_s=60).acquire()
        assert busy.value.record.holder == holder.holder
    with Lease(url, ttl_s=60) as successor:  # released on leaving the block
        assert successor.took_over is None


def test_an_expired_lease_is_taken_over_and_said_so(state_url, caplog):
    url = f"{state_url}/lease"
    crashed = Lease(url, ttl_s=0.2)
    crashed.acquire()  # and never renewed
    time.sleep(0.3)
    successor = Lease(url, ttl_s=60)
    successor.acquire()
    assert successor.took_over is not None and successor.took_over.token == crashed.token
    assert f"took over a stale lease: {crashed.holder} stopped renewing it" in caplog.text
    with pytest.raises(LeaseLost):
        crashed.renew()
    successor.renew()
    successor.release()


def test_of_many_triggers_racing_for_a_stale_lease_one_takes_it_over(state_url):
    url = f"{state_url}/lease"
    crashed = Lease(url, ttl_s=0.2)
    crashed.acquire()
    time.sleep(0.3)
    winners, losers = race_for(url, triggers=6)
    assert len(winners) == 1 and len(losers) == 5
    assert winners[0].took_over.token == crashed.token
    with pytest.raises(LeaseLost):
        crashed.renew()


def test_a_holder_past_max_hold_is_told_and_its_lease_lapses(state_url):
    url = f"{state_url}/lease"
    told = threading.Event()
    hung = Lease(url, ttl_s=1)
    successor = Lease(url, ttl_s=60)
    with (
        pytest.raises(LeaseLost, match="max_hold_s") as lost,
        hung.held(renew_every=0.2, on_lost=told.set, max_hold_s=0.5),
    ):
        assert told.wait(10)  # from the renewing thread
        time.sleep(1.2)  # still working: the lease expires all the same
        successor.acquire()
        assert successor.took_over.token == hung.token
    assert exit_status(lost.value) == EXIT_LEASE_LOST
    successor.renew()  # leaving the block did not release the successor's lease
    successor.release()


TRIGGER = """
import os, sys
from core.lease import Lease, LeaseError, exit_status
if os.geteuid() == 0:
    os.setuid(65534)  # a trigger that can read the state folder but not write it
try:
    Lease(sys.argv[1], ttl_s=60).acquire()
except LeaseError as err:
    print(err)
    sys.exit(exit_status(err))
"""


def run_read_only_trigger(url: Path) -> subprocess.CompletedProcess:
    if os.geteuid() != 0:
        url.chmod(0o555)
    return subprocess.run(
        [sys.executable, "-c", TRIGGER, str(url)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_stale_lease_that_cannot_be_taken_over_exits_non_zero(world_readable_dir):
    url = world_readable_dir / "lease"
    holder = Lease(str(url), ttl_s=60)
    with holder.held():
        busy = run_read_only_trigger(url)
    assert busy.returncode == 0, busy.stdout + busy.stderr  # a live holder: "already running"
    assert "already running" in busy.stdout

    url.chmod(0o755)
    crashed = Lease(str(url), ttl_s=0.2)
    crashed.acquire()
    time.sleep(0.3)
    stale = run_read_only_trigger(url)
    assert stale.returncode == EXIT_STALE_LEASE, stale.stdout + stale.stderr
    assert "stale lease" in stale.stdout and "could not be taken over" in stale.stdout
    assert crashed.holder in stale.stdout


def race_for(url: str, triggers: int) -> tuple[list[Lease], list[str]]:
    """`triggers` threads acquire the lease at `url` at once: who won, and the others' errors."""
    winners, losers = [], []
    start = threading.Barrier(triggers)

    def trigger():
        lease = Lease(url, ttl_s=60)
        start.wait()
        try:
            lease.acquire()
            winners.append(lease)
        except LeaseHeld as err:
            losers.append(str(err))

    threads = [threading.Thread(target=trigger) for _ in range(triggers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return winners, losers


@pytest.fixture
def world_readable_dir():
    """A folder any user can read (pytest's tmp_path is private to its user)."""
    folder = Path(tempfile.mkdtemp(prefix="vos-lease-"))
    folder.chmod(0o755)
    yield folder
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(folder)


def test_ledger_round_trip_and_open_cycle(state_url):
    url = f"{state_url}/ledger.json"
    ledger = Ledger(url)
    assert ledger.is_new("blackswan", "abc")
    cycle = Cycle.new(["blackswan", "car-shadow"])
    ledger.start(cycle)
    ledger.record_step(cycle, "generate", {"manifest": "s3://x/manifest.json"})
    ledger.quarantine("broken", "fff", "corrupt image")

    reloaded = Ledger(url)  # a rerun after a crash sees the open cycle and its finished steps
    open_cycle = reloaded.open_cycle()
    assert open_cycle is not None and open_cycle.id == cycle.id
    assert open_cycle.done("generate") and not open_cycle.done("finetune")
    assert reloaded.sequences["broken"]["status"] == "quarantined"

    reloaded.finish(open_cycle, "done", {"blackswan": "abc", "car-shadow": "def"})
    final = Ledger(url)
    assert final.open_cycle() is None
    assert not final.is_new("blackswan", "abc")
    assert final.is_new("blackswan", "changed")  # re-uploaded with other content
