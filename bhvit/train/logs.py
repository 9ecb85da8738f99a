"""JSON-lines logs and a dependency-free progress bar.

``log.jsonl`` holds one object per line: ``{"kind": "step", "step", "epoch", "lr", "loss", …}`` every
``log_every`` steps and ``{"kind": "epoch", "epoch", "train_loss", "test_acc1", "test_acc5", …}`` after
each epoch. Only rank 0 writes. Lines are flushed at once, so a killed run keeps its log.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO


class JsonlLogger:
    def __init__(self, path: str | Path | None, append: bool = False) -> None:
        self.file: TextIO | None = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a" if append else "w")  # noqa: SIM115 (kept open for the whole run)

    def log(self, kind: str, **fields: Any) -> None:
        if self.file is None:
            return
        record = {"kind": kind, "time": round(time.time(), 3), **{k: _plain(v) for k, v in fields.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf
    return v


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Progress:
    """``epoch 3/10 [#####.....] 250/469 loss 0.812 1.9 it/s`` on one line (a TTY) or every 10 %."""

    def __init__(self, total: int, prefix: str, enabled: bool = True, stream: TextIO = sys.stderr) -> None:
        self.total, self.prefix, self.enabled, self.stream = max(1, total), prefix, enabled, stream
        self.tty = stream.isatty()
        self.start, self.last_decile = time.time(), -1

    def update(self, done: int, **info: float) -> None:
        if not self.enabled:
            return
        decile = 10 * done // self.total
        if not self.tty and decile == self.last_decile and done != self.total:
            return
        self.last_decile = decile
        filled = 20 * done // self.total
        rate = done / max(1e-9, time.time() - self.start)
        extras = " ".join(f"{k} {v:.4g}" for k, v in info.items())
        line = f"{self.prefix} [{'#' * filled}{'.' * (20 - filled)}] {done}/{self.total} {extras} {rate:.2f} it/s"
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
