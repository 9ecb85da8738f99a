"""PNG plots of a run's ``log.jsonl``: loss terms, test accuracy, weight flip ratio.

matplotlib is optional (``pip install 'bhvit[plots]'``); without it the plots are skipped with a
warning and everything else still works.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from bhvit.train.logs import read_jsonl


def _pyplot() -> Any | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # missing, or broken backend
        warnings.warn(f"matplotlib unavailable ({e}); skipping plots (pip install matplotlib)", stacklevel=3)
        return None
    return plt


def save_png(fig: Any, path: Path) -> Path:
    """``fig`` as a PNG at ``path``, written atomically (a full disk names the file)."""
    from bhvit.checkpoint import atomic_write

    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def _series(records: list[dict], kind: str, x: str, y: str) -> tuple[list, list]:
    pts = [(r[x], r[y]) for r in records if r["kind"] == kind and isinstance(r.get(y), int | float)]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``loss.png``, ``accuracy.png`` and ``flip_ratio.png`` into ``run_dir``; returns the paths."""
    plt = _pyplot()
    run_dir = Path(run_dir)
    if plt is None or not (run_dir / "log.jsonl").is_file():
        return []
    records = read_jsonl(run_dir / "log.jsonl")
    figures = {
        "loss.png": ("step", [("loss", "loss"), ("task_loss", "CE"), ("kd_loss", "KD"), ("reg_loss", "L_re")], "step"),
        "accuracy.png": ("epoch", [("test_acc1", "top-1"), ("test_acc5", "top-5")], "epoch"),
        "flip_ratio.png": ("step", [("flip_ratio", "flip ratio")], "step"),
    }
    written = []
    for name, (kind, curves, x) in figures.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        drawn = False
        for key, label in curves:
            xs, ys = _series(records, kind, x, key)
            if xs:
                ax.plot(xs, ys, label=label, marker="o" if kind == "epoch" else None)
                drawn = True
        if drawn:
            ax.set_xlabel(x)
            ax.grid(alpha=0.3)
            ax.legend()
            fig.tight_layout()
            save_png(fig, run_dir / name)
            written.append(run_dir / name)
        plt.close(fig)
    return written
