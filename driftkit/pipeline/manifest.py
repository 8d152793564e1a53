"""The run manifest: which steps ran, with which inputs, producing which outputs.

Why content hashes: a step is redone exactly when something it depends on changed — its own
settings or the hash of a step it reads from — so a rerun does no finished work and editing one
setting redoes only its dependants. The manifest is rewritten atomically after every step, so a
crash never loses the record of completed work.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from driftkit.atomic import atomic_write

SCHEMA = "driftkit.run/1"


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Manifest:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"schema": SCHEMA, "steps": {}}
        if path.is_file():
            try:
                loaded = json.loads(path.read_text())
                if loaded.get("schema") == SCHEMA:
                    self.data = loaded
            except json.JSONDecodeError:
                pass  # an unreadable manifest only costs recomputation, never wrong reuse

    def step(self, step_id: str) -> dict[str, Any] | None:
        return self.data["steps"].get(step_id)

    def record(self, step_id: str, entry: dict[str, Any]) -> None:
        self.data["steps"][step_id] = entry
        self.save()

    def forget(self, step_id: str) -> None:
        if self.data["steps"].pop(step_id, None) is not None:
            self.save()

    def save(self) -> None:
        atomic_write(self.path, json.dumps(self.data, indent=2, default=str))
