"""The retraining ledger: what was seen, what was trained on, and what was decided.

One JSON document on object storage (`<state>/ledger.json`), rewritten atomically after every
step of a retraining cycle, so that a rerun after a crash resumes the open cycle where it
stopped instead of training twice on the same data. The Ray job of each step is recorded, so
the rerun waits for that job rather than submitting another:

    {
      "sequences": {"<name>": {"fingerprint": "...", "status": "trained" | "quarantined",
                               "reason": "...", "cycle": "<cycle id>"}},
      "cycles": [{"id": "...", "status": "open" | "done" | "failed", "sequences": [...],
                  "steps": {"found": {"fingerprints": {...}},
                            "generate": {"job_id": "...", "manifest": "...", "clips": ...},
                            "finetune": {"job_id": "...", "run_name": "...", "run_id": "..."},
                            "register": {"name": "...", "version": "..."},
                            "promote": {"job_id": "...", "version": "...", "outcome": "...",
                                        "reason": "...", "evaluation_set": "...", ...},
                            "error": {"message": "..."}},
                  "started_at": ..., "finished_at": ...}]
    }
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from core import storage

__all__ = ["Cycle", "Ledger"]


@dataclass
class Cycle:
    """One retraining cycle over a set of new sequences."""

    id: str
    sequences: list[str]
    status: str = "open"
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    @classmethod
    def new(cls, sequences: list[str]) -> Cycle:
        return cls(id=time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6], sequences=sequences)

    def done(self, step: str) -> bool:
        return step in self.steps


class Ledger:
    """Load, update and save the ledger at `url`."""

    def __init__(self, url: str):
        self.url = url
        self.sequences: dict[str, dict[str, Any]] = {}
        self.cycles: list[Cycle] = []
        if storage.exists(url):
            data = json.loads(storage.read_bytes(url))
            self.sequences = data.get("sequences", {})
            self.cycles = [Cycle(**cycle) for cycle in data.get("cycles", [])]

    def save(self) -> None:
        data = {
            "sequences": self.sequences,
            "cycles": [vars(cycle) for cycle in self.cycles],
        }
        storage.write_bytes_atomic(self.url, json.dumps(data, indent=2, sort_keys=True).encode())

    def open_cycle(self) -> Cycle | None:
        """The cycle a crashed run left open, if any."""
        return next((cycle for cycle in self.cycles if cycle.status == "open"), None)

    def is_new(self, name: str, fingerprint: str) -> bool:
        """A sequence is new when never seen, or seen with other content (fixed and re-uploaded)."""
        seen = self.sequences.get(name)
        return seen is None or seen["fingerprint"] != fingerprint

    def quarantine(self, name: str, fingerprint: str, reason: str) -> None:
        self.sequences[name] = {
            "fingerprint": fingerprint,
            "status": "quarantined",
            "reason": reason,
        }
        self.save()

    def start(self, cycle: Cycle) -> None:
        self.cycles.append(cycle)
        self.save()

    def record_step(self, cycle: Cycle, step: str, result: dict[str, Any]) -> None:
        cycle.steps[step] = result
        self.save()

    def finish(self, cycle: Cycle, status: str, fingerprints: dict[str, str]) -> None:
        cycle.status = status
        cycle.finished_at = time.time()
        if status == "done":
            for name in cycle.sequences:
                self.sequences[name] = {
                    "fingerprint": fingerprints[name],
                    "status": "trained",
                    "cycle": cycle.id,
                }
        self.save()
