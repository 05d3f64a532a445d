"""``metrics.jsonl``: one JSON line per logged step (loss, lr, tokens/s, elapsed, tokens) and per evaluation."""

from __future__ import annotations

import json
from pathlib import Path

METRICS = "metrics.jsonl"


class MetricsLog:
    """Appends JSON lines to ``metrics.jsonl`` (main process only); on resume, drops lines past the resume step."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if resume_step is None:
            path.write_text("")
        elif path.is_file():
            lines = path.read_text().splitlines()
            kept = [line for line in lines if line and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, **record) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
