"""A lease on object storage: one holder at a time, kept alive while its holder works.

The lease is a folder of numbered records, `<url>/00000001.json`, `00000002.json`, ...; the
highest number is the lease now. Taking the lease, free or stale, is creating the next number
with an exclusive create (`open(..., "xb")`: `O_EXCL` locally, `If-None-Match: *` on S3), so of
any number of triggers racing for it exactly one wins, and no holder ever overwrites another's
record. The winner then removes records far below its own (the newest KEEP_RECORDS stay, so
a listing made while records come and go still finds the newest).

A lease is short (minutes) and its holder renews it while it works: `with lease.held(): ...`
renews from a daemon thread and releases on exit. A lease whose holder stopped renewing (it
crashed, or hung past `max_hold_s`) expires and is *stale*: the next trigger takes it over and
logs one line saying so. A stale lease that cannot be taken over (storage refuses the write)
raises `StaleLease`, and `exit_status` gives a trigger that did not run a non-zero exit status
for it, so a scheduled trigger never exits 0 for ever behind a dead lease.

Expiry is the holder's wall-clock time compared with the reader's: clocks must agree to well
within the ttl.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import posixpath
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from core import storage

__all__ = [
    "EXIT_LEASE_LOST",
    "EXIT_STALE_LEASE",
    "KEEP_RECORDS",
    "Lease",
    "LeaseError",
    "LeaseHeld",
    "LeaseLost",
    "LeaseRecord",
    "StaleLease",
    "exit_status",
]

DEFAULT_TTL_S = 600.0
EXIT_STALE_LEASE = 3  # a stale lease could not be taken over: someone must look
EXIT_LEASE_LOST = 4  # this run's lease expired or was taken over while it worked
RECORD_NAME = re.compile(r"^(\d{8})\.json$")
# A local listing skips files removed while it runs, and may miss files created meanwhile:
# pruning only far below the newest record keeps the newest ones in every listing.
KEEP_RECORDS = 8

log = logging.getLogger(__name__)


class LeaseError(RuntimeError):
    """Why a holder does not (or no longer) hold the lease; the message is one line."""


class LeaseHeld(LeaseError):
    """Another holder holds the lease and renews it; the message names it and its expiry,
    `record` is its record."""

    def __init__(self, message: str, record: LeaseRecord | None = None):
        super().__init__(message)
        self.record = record


class StaleLease(LeaseError):
    """The lease is stale (or free) but cannot be taken: storage refused the write, or the
    current record is not a lease record."""


class LeaseLost(LeaseError):
    """This holder's lease expired before it was renewed, or another holder took it over."""


def exit_status(error: LeaseError) -> int:
    """The exit status of a trigger that stopped on `error`.

    0 for `LeaseHeld`: another run is alive and renewing, a busy schedule is normal.
    EXIT_STALE_LEASE when a stale lease could not be taken over, and EXIT_LEASE_LOST when this
    run lost its lease while it worked: both need someone to look, so neither is 0.
    """
    if isinstance(error, LeaseHeld):
        return 0
    if isinstance(error, LeaseLost):
        return EXIT_LEASE_LOST
    return EXIT_STALE_LEASE


@dataclass
class LeaseRecord:
    holder: str
    token: str
    acquired_at: float
    expires_at: float
    released: bool = False

    def live(self, now: float) -> bool:
        return not self.released and self.expires_at > now

    def describe(self) -> str:
        state = "released" if self.released else "until"
        return f"{self.holder}, {state} {_clock(self.expires_at)}"


class Lease:
    """The lease at `url` (a folder) for one would-be holder; `ttl_s` is how long one
    acquisition or renewal keeps it.

    `with lease.held(): ...` (or `with lease: ...`) holds it for the block, renewing it, or
    raises `LeaseHeld` / `StaleLease`. After acquiring, `took_over` is the stale record this
    holder took the lease from, or None.
    """

    def __init__(self, url: str, ttl_s: float = DEFAULT_TTL_S):
        if ttl_s <= 0:
            raise ValueError(f"lease {url}: ttl_s must be positive, not {ttl_s}")
        self.url = url
        self.ttl_s = ttl_s
        self.token = uuid.uuid4().hex
        self.holder = f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}"
        self.took_over: LeaseRecord | None = None
        self._number: int | None = None  # of this holder's record, while it holds the lease
        self._acquired_at = 0.0
        self._expires_at = 0.0
        self._held: contextlib.AbstractContextManager | None = None

    # -- the lease's life --------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lease if it is free or stale; raise `LeaseHeld` if another holds it."""
        number, current = self._current()
        if current is not None and current.live(time.time()):
            raise LeaseHeld(f"already running: {current.describe()}", current)
        stale = None if current is None or current.released else current
        try:
            won = self._create(number + 1)
        except OSError as err:
            what = f"the stale lease ({stale.describe()})" if stale else "the free lease"
            raise StaleLease(
                f"{what} at {self.url} could not be taken over: {_one_line(err)}"
            ) from err
        if not won:
            self._lost_race()
        self._number = number + 1
        if stale is not None:
            self.took_over = stale
            log.warning(
                "lease %s: took over a stale lease: %s stopped renewing it (expired %s)",
                self.url,
                stale.holder,
                _clock(stale.expires_at),
            )
        self._prune_below(self._number - KEEP_RECORDS + 1)

    def renew(self) -> None:
        """Extend this holder's lease by `ttl_s`; raise `LeaseLost` if it is no longer held."""
        if self._number is None:
            raise LeaseLost(f"lease {self.url}: not held by {self.holder}")
        if time.time() >= self._expires_at:
            raise LeaseLost(
                f"lease {self.url}: expired at {_clock(self._expires_at)} before it was renewed"
            )
        number, current = self._current()
        if number != self._number or current is None or current.token != self.token:
            holder = current.holder if current else "nobody"
            raise LeaseLost(f"lease {self.url}: taken over by {holder} after it expired")
        expires_at = time.time() + self.ttl_s
        storage.write_bytes_atomic(self._record_url(self._number), self._record(expires_at))
        self._expires_at = expires_at

    def release(self) -> None:
        """Give the lease up (the next holder takes it without calling it stale)."""
        if self._number is None:
            return
        number, current = self._current()
        if number == self._number and current is not None and current.token == self.token:
            record = self._record(time.time(), released=True)
            storage.write_bytes_atomic(self._record_url(number), record)
        self._number = None

    def _release_quietly(self) -> None:
        try:
            self.release()
        except Exception as err:  # noqa: BLE001 - the lease then lapses after its ttl
            log.warning("lease %s: release failed, it expires by itself: %s", self.url, err)

    @contextlib.contextmanager
    def held(
        self,
        renew_every: float | None = None,
        on_lost: Callable[[], object] | None = None,
        max_hold_s: float | None = None,
    ) -> Iterator[Lease]:
        """Acquire; renew every `renew_every` s (default ttl/3) from a daemon thread; release.

        Renewing stops when the lease is lost: a renewal finds it expired or taken over, or
        the lease has been held `max_hold_s` (a hung holder must not keep it for ever). Then
        `on_lost()` is called from the renewing thread (e.g. `stop_event.set`) so the holder
        can stop, and leaving the block raises that `LeaseLost`.
        """
        every = self.ttl_s / 3 if renew_every is None else renew_every
        if not 0 < every < self.ttl_s:
            raise ValueError(f"lease {self.url}: renew_every must be in (0, ttl_s), not {every}")
        self.acquire()
        renewer = _Renewer(self, every, on_lost, max_hold_s)
        try:
            yield self
        except Exception as err:
            if renewer.lost is None:
                raise
            raise renewer.lost from err
        finally:
            renewer.stop()
            self._release_quietly()
        if renewer.lost is not None:
            raise renewer.lost

    def __enter__(self) -> Lease:
        self._held = self.held()
        return self._held.__enter__()

    def __exit__(self, *exc) -> bool | None:
        held, self._held = self._held, None
        return held.__exit__(*exc)

    # -- records -----------------------------------------------------------------------------
    def _record_url(self, number: int) -> str:
        return storage.join(self.url, f"{number:08d}.json")

    def _record(self, expires_at: float, released: bool = False) -> bytes:
        record = LeaseRecord(self.holder, self.token, self._acquired_at, expires_at, released)
        return json.dumps(asdict(record)).encode()

    def _numbers(self) -> list[int]:
        fs, path = storage.filesystem(self.url)
        try:
            entries = fs.ls(path, detail=True, refresh=True)
        except FileNotFoundError:
            return []
        names = [posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "file"]
        return [int(m.group(1)) for m in map(RECORD_NAME.match, names) if m]

    def _current(self) -> tuple[int, LeaseRecord | None]:
        """The highest record number (0 when there is none) and its record."""
        numbers = self._numbers()
        if not numbers:
            return 0, None
        number = max(numbers)
        return number, self._read(number)

    def _read(self, number: int) -> LeaseRecord | None:
        url = self._record_url(number)
        fs, path = storage.filesystem(url)
        try:
            data = storage.read_bytes(url)
            if data:
                return LeaseRecord(**json.loads(data))
            # Created but not yet written (a local exclusive create is not atomic with its
            # content): held by a racer since the file's time, for one lease period.
            created = fs.modified(path).timestamp()
        except FileNotFoundError:  # removed after the listing: a newer record exists
            return None
        except (ValueError, TypeError) as err:
            raise StaleLease(f"lease {url}: not a lease record ({_one_line(err)})") from err
        return LeaseRecord("(another trigger, starting)", "", created, created + self.ttl_s)

    def _create(self, number: int) -> bool:
        """Create record `number` for this holder; False if another holder created it first."""
        fs, path = storage.filesystem(self._record_url(number))
        fs.makedirs(fs._parent(path), exist_ok=True)
        self._acquired_at = time.time()
        expires_at = self._acquired_at + self.ttl_s
        try:
            with fs.open(path, "xb") as handle:
                handle.write(self._record(expires_at))
        except FileExistsError:
            return False
        except OSError as err:  # s3fs reports a failed precondition as an OSError
            if "PreconditionFailed" in str(err) or "412" in str(err):
                return False
            raise
        self._expires_at = expires_at
        return True

    def _lost_race(self) -> None:
        """Another trigger created the next record first: it holds the lease now."""
        number, winner = self._current()
        if winner is not None and winner.live(time.time()):
            raise LeaseHeld(f"already running: {winner.describe()}", winner)
        # The next record's name is taken by something that is not a live lease: taking
        # over would fail the same way every time, so say so rather than report "running".
        raise StaleLease(f"lease {self.url}: record {number + 1:08d} exists but is no lease")

    def _prune_below(self, number: int) -> None:
        for older in self._numbers():
            if older < number:
                with contextlib.suppress(OSError):
                    storage.remove(self._record_url(older))


class _Renewer:
    """The daemon thread that renews a held lease until stopped or the lease is lost."""

    def __init__(self, lease: Lease, every: float, on_lost, max_hold_s: float | None):
        self.lease = lease
        self.every = every
        self.on_lost = on_lost
        self.deadline = None if max_hold_s is None else time.monotonic() + max_hold_s
        self.lost: LeaseLost | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-renewer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self.every):
            try:
                if self.deadline is not None and time.monotonic() > self.deadline:
                    raise LeaseLost(f"lease {self.lease.url}: held past max_hold_s; not renewed")
                self.lease.renew()
            except LeaseLost as err:
                self.lost = err
                log.error("%s", err)
                if self.on_lost is not None:
                    self.on_lost()
                return
            except Exception as err:  # noqa: BLE001 - retried; expiry decides when it is lost
                log.warning("lease %s: renewal failed, retrying: %s", self.lease.url, err)


def _clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"
