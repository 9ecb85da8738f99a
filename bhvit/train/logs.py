"""JSON-lines logs and a dependency-free progress bar.

``log.jsonl`` holds one object per line: ``{"kind": "step", "step", "epoch", "lr", "loss", …}`` every
``log_every`` steps and ``{"kind": "epoch", "epoch", "train_loss", "test_acc1", "test_acc5", …}`` after
each epoch; at step 0 a run also logs ``{"kind": "split", …}`` (a flat folder's hold-out split, see
:func:`bhvit.data.folder.split_flat`), ``{"kind": "warning", "message"}`` and ``{"kind": "init", …}``
(what ``--init-from`` copied). Only rank 0 writes. Lines are flushed at once, so a killed run keeps its log (its last
line may be cut short: :func:`read_jsonl` skips such a line, :func:`trim_log` removes it).

A resumed run continues the log of its checkpoint: :func:`trim_log` first drops what the killed run
logged after that checkpoint, so no step appears twice.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO


class JsonlLogger:
    """Appends records to ``path`` (None: a silent logger, for ranks other than 0); a full disk is a
    :class:`bhvit.checkpoint.NoSpaceError` naming the log."""

    def __init__(self, path: str | Path | None, append: bool = False) -> None:
        self.file: BinaryIO | None = None
        self.path = path
        if path is not None:
            with _no_space_named(path):
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                # unbuffered: a record is on disk when log() returns, and a failed write leaves no
                # buffer for the interpreter to retry (and fail at) when it exits
                self.file = open(path, "ab" if append else "wb", buffering=0)  # noqa: SIM115 (open for the run)

    def log(self, kind: str, **fields: Any) -> None:
        if self.file is None:
            return
        record = {"kind": kind, "time": round(time.time(), 3), **{k: _plain(v) for k, v in fields.items()}}
        rest = memoryview((json.dumps(record) + "\n").encode())
        with _no_space_named(self.path):
            while rest:  # a raw write may be short
                rest = rest[self.file.write(rest) :]

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


@contextlib.contextmanager
def _no_space_named(path: str | Path | None) -> Iterator[None]:
    """Turn a full disk (ENOSPC, EDQUOT) inside the block into :class:`NoSpaceError` naming ``path``."""
    from bhvit.checkpoint import FULL_DISK, NoSpaceError

    try:
        yield
    except OSError as e:
        if e.errno in FULL_DISK:
            raise NoSpaceError(str(path)) from None
        raise


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf
    return v


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a log; a last line cut short by a killed writer is skipped."""
    records, cut = _parse(Path(path).read_text())
    if cut:
        raise ValueError(f"{path}: line {cut} is not JSON (only the last line of a killed run's log may be)")
    return records


def _parse(text: str) -> tuple[list[dict[str, Any]], int]:
    """(records, number of the first unreadable line before the last one, or 0)."""
    lines = text.splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                return records, i + 1
    return records, 0


def trim_log(path: str | Path, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrite ``path`` atomically with only the records ``keep`` accepts; returns how many were dropped.

    A missing file is left missing; a cut-short last line counts as dropped.
    """
    from bhvit.checkpoint import atomic_write

    path = Path(path)
    if not path.is_file():
        return 0
    text = path.read_text()
    records, cut = _parse(text)
    if cut:
        raise ValueError(f"{path}: line {cut} is not JSON (only the last line of a killed run's log may be)")
    kept = [r for r in records if keep(r)]
    dropped = sum(1 for line in text.splitlines() if line.strip()) - len(kept)
    if dropped:
        body = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write(path, lambda tmp: Path(tmp).write_text(body))
    return dropped


class Progress:
    """``epoch 3/10 [#####.....] 250/469 loss 0.812 1.9 it/s`` on one line (a TTY) or every 10 %."""

    def __init__(self, total: int, prefix: str, enabled: bool = True, stream: TextIO | None = None) -> None:
        """``stream`` None: ``sys.stderr`` as it is now (not as it was when this module was imported: a
        replaced stderr, e.g. pytest's capture of an earlier test, may be closed since)."""
        stream = sys.stderr if stream is None else stream
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
