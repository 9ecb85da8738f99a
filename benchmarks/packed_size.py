"""Packed file size next to the fp32 checkpoint, for bhvit_tiny and bhvit_small in both precisions.

The fp32 checkpoint is ``torch.save(model.state_dict())``; the packed file is ``bhvit.engine.save_packed``
(docs/packed-format.md). Prints a table with the byte breakdown and writes JSON.

    python benchmarks/packed_size.py --json out/packed_size.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import bhvit
from bhvit import engine
from bhvit.engine.bench import format_table
from bhvit.models.bhvit import BINARY_PRECISIONS


def measure(name: str, precision: str) -> dict:
    model = bhvit.create_model(name, precision=precision).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = engine.save_packed(engine.pack(model), Path(tmp) / "m.bhvp")
        report = engine.size_report(model, path)
    n_binary = sum(m.weight.numel() for _, m in bhvit.quant.binary_weight_layers(model))
    n_params = sum(p.numel() for p in model.parameters())
    return {"model": name, "precision": precision, "params": n_params, "binary_params": n_binary, **report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bhvit_tiny", "bhvit_small"])
    parser.add_argument("--precision", nargs="+", default=list(BINARY_PRECISIONS), choices=BINARY_PRECISIONS)
    parser.add_argument("--json", default="out/packed_size.json")
    args = parser.parse_args()
    rows = [measure(m, p) for m in args.models for p in args.precision]
    for r in rows:
        for k in ("fp32_checkpoint_bytes", "packed_bytes", "binary_weight_bytes", "float_bytes"):
            r[k.replace("_bytes", "_mb")] = r[k] / 2**20
    print(
        format_table(
            rows,
            [
                ("model", "model", ""),
                ("precision", "precision", ""),
                ("params", "params", ","),
                ("binary_params", "binary", ","),
                ("fp32_checkpoint_mb", "fp32 MiB", ".2f"),
                ("packed_mb", "packed MiB", ".2f"),
                ("ratio", "ratio", ".1f"),
                ("binary_weight_mb", "bits MiB", ".2f"),
                ("float_mb", "floats MiB", ".2f"),
            ],
        )
    )
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
