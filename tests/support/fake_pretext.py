"""Stand-ins for a decoded dataset and a pretext result: what the pretext cache stores and loads, without TensorFlow."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class FakeData:
    fingerprint: str = "abc123"


@dataclass
class FakeResult:
    """Stands in for training.PretextResult: what the cache stores and loads."""

    seed: int

    def save(self, d: Path) -> None:
        Path(d).mkdir(parents=True, exist_ok=True)
        (Path(d) / "fake.json").write_text(json.dumps({"seed": self.seed}))

    @classmethod
    def load(cls, d: Path) -> "FakeResult":
        return cls(**json.loads((Path(d) / "fake.json").read_text()))
