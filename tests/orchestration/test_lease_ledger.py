"""The retraining lease (single-flight) and ledger (resumable record) on local and S3 storage."""

from __future__ import annotations

import threading
import time

import pytest

from core.lease import Lease, LeaseHeld
from orchestration.ledger import Cycle, Ledger


@pytest.fixture(params=["local", "s3"])
def state_url(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "state")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = endpoint.make_bucket(f"lease-{int(time.time() * 1000) % 10**9}")
    return f"{bucket}/state"


def test_one_of_many_racing_triggers_gets_the_lease(state_url):
    url = f"{state_url}/lease.json"
    winners, losers = [], []
    start = threading.Barrier(6)

    def trigger():
        lease = Lease(url, ttl_s=60)
        start.wait()
        try:
            lease.acquire()
            winners.append(lease)
        except LeaseHeld as err:
            losers.append(str(err))

    threads = [threading.Thread(target=trigger) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert len(losers) == 5
    assert all("already running" in message for message in losers)

    winners[0].release()
    with Lease(url, ttl_s=60):  # free again once released
        pass


def test_an_expired_lease_is_taken_over_and_the_old_holder_cannot_renew(state_url):
    url = f"{state_url}/lease.json"
    crashed = Lease(url, ttl_s=0.2)
    crashed.acquire()
    time.sleep(0.3)
    successor = Lease(url, ttl_s=60)
    successor.acquire()
    with pytest.raises(LeaseHeld, match="lost"):
        crashed.renew()
    successor.renew()
    successor.release()


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
