"""A lease on object storage that makes retraining single-flight.

One JSON object, `<state>/lease.json`, created with an exclusive create (`open(..., "xb")`:
`O_EXCL` locally, `If-None-Match: *` on S3), so of two triggers racing for it exactly one wins.
A lease names its holder and expires: a holder that crashed does not block retraining forever,
and a long run renews its lease between steps.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass

from core import storage

__all__ = ["Lease", "LeaseHeld"]


class LeaseHeld(RuntimeError):
    """Another retraining run holds the lease; the message names it and its expiry."""


@dataclass
class LeaseRecord:
    holder: str
    token: str
    acquired_at: float
    expires_at: float


class Lease:
    """`with Lease(url, ttl_s): ...` holds the lease for the block or raises `LeaseHeld`."""

    def __init__(self, url: str, ttl_s: float = 6 * 3600):
        self.url = url
        self.ttl_s = ttl_s
        self.token = uuid.uuid4().hex
        self.holder = f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}"

    def acquire(self) -> None:
        current = self._read()
        if current is not None:
            if current.expires_at > time.time():
                raise LeaseHeld(
                    f"retraining is already running ({current.holder}, lease until "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(current.expires_at))})"
                )
            storage.remove(self.url)  # expired: its holder died; one of the racers recreates it
        if not self._create():
            holder = self._read()
            raise LeaseHeld(f"retraining is already running ({holder.holder if holder else '?'})")

    def renew(self) -> None:
        """Extend the lease; a lease that someone else now holds is not taken back."""
        current = self._read()
        if current is None or current.token != self.token:
            raise LeaseHeld("the retraining lease was lost (expired and taken by another run)")
        storage.write_bytes_atomic(self.url, self._record().encode())

    def release(self) -> None:
        current = self._read()
        if current is not None and current.token == self.token:
            storage.remove(self.url)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _record(self) -> str:
        now = time.time()
        record = LeaseRecord(self.holder, self.token, now, now + self.ttl_s)
        return json.dumps(asdict(record))

    def _create(self) -> bool:
        fs, path = storage.filesystem(self.url)
        fs.makedirs(fs._parent(path), exist_ok=True)
        try:
            with fs.open(path, "xb") as handle:
                handle.write(self._record().encode())
        except FileExistsError:
            return False
        except OSError as err:  # s3fs reports a failed precondition as an OSError
            if "PreconditionFailed" in str(err) or "412" in str(err):
                return False
            raise
        return True

    def _read(self) -> LeaseRecord | None:
        try:
            data = storage.read_bytes(self.url)
        except FileNotFoundError:
            return None
        try:
            return LeaseRecord(**json.loads(data))
        except (ValueError, TypeError):
            # Created but not yet written (a local exclusive create is not atomic with its
            # content): held by a racer since the file's time, for one lease period.
            fs, path = storage.filesystem(self.url)
            created = fs.modified(path).timestamp()
            return LeaseRecord("(another trigger, starting)", "", created, created + self.ttl_s)
