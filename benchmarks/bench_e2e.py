"""End-to-end latency: packed engine vs the float-simulated PyTorch model vs torch int8 dynamic quantization.

For each variant (bhvit_tiny, bhvit_small at 224) and batch size, in one run and on the same number of
threads, it times:

* ``fp32_sim``: the PyTorch model with binarization simulated in fp32 (what training produces);
* ``packed``: ``bhvit.engine.pack(model)``, every binary op on packed bits in native code;
* ``int8_dynamic``: the same architecture at full precision with its linear layers quantized to int8 by
  ``torch.ao.quantization.quantize_dynamic`` (the usual CPU deployment baseline);
* ``onnxruntime_fp32``: the simulated model exported to ONNX, when onnx and onnxruntime are installed.

The methods are timed in interleaved rounds (so background load hits all of them alike) and the best
round is reported. Prints a table and writes JSON.

    python benchmarks/bench_e2e.py --threads 2 --batch 1 32 --json out/bench_e2e.json
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved, machine_info, print_table, write_json  # noqa: E402

import bhvit  # noqa: E402
from bhvit import engine  # noqa: E402


def int8_dynamic(name: str) -> nn.Module:
    """The full-precision architecture with every linear layer quantized to int8 (dynamic)."""
    model = bhvit.create_model(name, precision="fp").eval()
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Linear) and type(child) is not nn.Linear:  # QuantLinear -> nn.Linear
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                plain.load_state_dict(child.state_dict(), strict=False)
                setattr(parent, child_name, plain)
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def onnx_runner(model: nn.Module, x: torch.Tensor) -> Callable[[], object] | None:
    """An onnxruntime fp32 session of the model, or None when onnx/onnxruntime are missing."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    path = Path("out") / "bench_e2e_tmp.onnx"
    path.parent.mkdir(exist_ok=True)
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return lambda: sess.run(None, feed)


def bench(name: str, precision: str, batch: int, rounds: int, threads: int) -> dict:
    model = bhvit.create_model(name, precision=precision).eval()
    packed = engine.pack(model)
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        agree = bool(torch.equal(model(x).argmax(1), packed(x).argmax(1)))
        q8 = int8_dynamic(name)
        fns: dict[str, Callable[[], object]] = {
            "fp32_sim": lambda: model(x),
            "packed": lambda: packed(x),
            "int8_dynamic": lambda: q8(x),
        }
        ort = onnx_runner(model, x) if os.environ.get("BHVIT_BENCH_ONNX", "1") == "1" else None
        if ort is not None:
            fns["onnxruntime_fp32"] = ort
        times = interleaved(fns, rounds, min_round=0.0 if batch > 1 else 0.3)
        with packed.profile() as layer_times:
            packed(x)
    row = {"model": name, "precision": precision, "batch": batch, "threads": threads, "top1_agree": agree,
           "packed_layers_ms": {k: v * 1e3 for k, v in sorted(layer_times.items(), key=lambda kv: -kv[1])}}
    row.update({f"{k}_ms": v * 1e3 for k, v in times.items()})
    row["speedup_vs_fp32"] = times["fp32_sim"] / times["packed"]
    row["speedup_vs_int8"] = times["int8_dynamic"] / times["packed"]
    row["cpu_speedup_vs_fp32"] = times["fp32_sim_cpu"] / times["packed_cpu"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bhvit_tiny", "bhvit_small"])
    parser.add_argument("--precision", nargs="+", default=["binary"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default="out/bench_e2e.json")
    args = parser.parse_args()
    rows = []
    for t in args.threads:
        torch.set_num_threads(t)
        engine.set_num_threads(t)
        rows += [bench(m, p, b, args.rounds, t) for m in args.models for p in args.precision for b in args.batch]
    cols = [("model", "model", ""), ("precision", "precision", ""), ("batch", "B", ""), ("threads", "thr", ""),
            ("fp32_sim_ms", "fp32 sim ms", ".1f"), ("int8_dynamic_ms", "int8 dyn ms", ".1f"),
            ("packed_ms", "packed ms", ".1f"), ("speedup_vs_fp32", "x fp32", ".2f"),
            ("speedup_vs_int8", "x int8", ".2f"), ("fp32_sim_cpu_ms", "fp32 cpu ms", ".1f"),
            ("packed_cpu_ms", "packed cpu ms", ".1f"), ("cpu_speedup_vs_fp32", "x fp32 cpu", ".2f"),
            ("top1_agree", "top-1 =", "")]
    if any("onnxruntime_fp32_ms" in r for r in rows):
        cols.insert(5, ("onnxruntime_fp32_ms", "ort ms", ".1f"))
    print(f"isa={engine.current_isa()} load={os.getloadavg()[0]:.2f}")
    print_table(rows, cols)
    print("\npacked model, time per op kind (ms, one forward):")
    for r in rows:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r["packed_layers_ms"].items())
        print(f"  {r['model']} {r['precision']} B={r['batch']} threads={r['threads']}: {parts}")
    write_json(args.json, {"machine": machine_info(), "load_avg": os.getloadavg(),
                           "rows": rows})


if __name__ == "__main__":
    main()
