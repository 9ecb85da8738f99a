"""End-to-end latency benchmark of the packed engine (behind ``bhvit bench`` and
``benchmarks/bench_e2e.py``).

For each model and batch size, in one run and on the same number of threads, it times:

* ``fp32_sim``: the PyTorch model with binarization simulated in fp32 (what training produces);
* ``packed``: ``bhvit.engine.pack(model)``, the whole forward in the native runtime (``libbhvit_runtime``);
* ``int8_dynamic``: the same architecture at full precision with its linear layers quantized to int8 by
  ``torch.ao.quantization.quantize_dynamic`` (the usual CPU deployment baseline);
* ``onnxruntime_fp32``: the simulated model exported to ONNX, when onnx and onnxruntime are installed.

Methods run in interleaved rounds (background load hits all alike) and the best round counts; the
process CPU time per call is recorded too (on one thread it ignores time spent waiting for a core on a
shared machine). Also a per-op-kind profile of one packed forward, and the share of the ideal time it
reaches: the model's binary multiply-accumulates (BOPs, :func:`bhvit.profile_model`) at the peak rate of
the runtime's binary GEMM measured in the same run (:func:`kernel_peak`: a one-layer program, profiled).
Prints a table and writes JSON. (The packed model as an earlier revision shipped it, e.g. the version-1
forward: ``benchmarks/bench_vs_revision.py``.)
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bhvit import runtime
from bhvit.engine.api import pack
from bhvit.engine.program import Program
from bhvit.runtime import ops
from bhvit.runtime.reference import pack as pack_bits


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int = 3, min_round: float = 0.05) -> dict[str, float]:
    """Best per-call wall seconds of each function over interleaved rounds (after a warm-up call), and
    ``<name>_cpu``: process CPU seconds per call, best round."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    cpu = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            n, start, cpu0 = 0, time.perf_counter(), time.process_time()
            while n == 0 or time.perf_counter() - start < min_round:
                fn()
                n += 1
            best[k] = min(best[k], (time.perf_counter() - start) / n)
            cpu[k] = min(cpu[k], (time.process_time() - cpu0) / n)
    return {**best, **{f"{k}_cpu": v for k, v in cpu.items()}}


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what the platform says)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """One line naming this machine for a printed timing: CPU, CPUs this process may use, the runtime's kernel
    path, load average."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"machine: {cpu_name()}, {usable} of {os.cpu_count()} CPUs usable, runtime kernels {runtime.isa()}, "
        f"torch {torch.__version__}, load {os.getloadavg()[0]:.2f}"
    )


def machine_info() -> dict[str, Any]:
    """CPU model, core count, versions and the engine's code path, for the JSON record."""
    return {
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "engine_isa": runtime.isa(),
        "engine_isas": runtime.available_isas(),
        "load_avg": os.getloadavg(),
    }


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Rows as an aligned text table; columns are (key, header, format spec)."""
    cells = [[format(r[k], f) if f else str(r[k]) for k, _, f in columns] for r in rows]
    heads = [h for _, h, _ in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(heads, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(c, widths)) for c in cells]
    return "\n".join(lines)


def int8_dynamic(model_fp: nn.Module) -> nn.Module:
    """A full-precision model with every linear layer quantized to int8 (dynamic)."""
    for parent in list(model_fp.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Linear) and type(child) is not nn.Linear:  # QuantLinear -> nn.Linear
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                plain.load_state_dict(child.state_dict(), strict=False)
                setattr(parent, child_name, plain)
    return torch.ao.quantization.quantize_dynamic(model_fp, {nn.Linear}, dtype=torch.qint8)


def onnx_runner(model: nn.Module, x: torch.Tensor, workdir: Path) -> Callable[[], Any] | None:
    """An onnxruntime fp32 session of the model, or None when onnx/onnxruntime are missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError:
        return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(dir=workdir if workdir.is_dir() else None) as tmp:  # the session keeps
        path = Path(tmp) / "model.onnx"  # the graph in memory
        torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False)
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return lambda: sess.run(None, feed)


def build(name: str, precision: str, checkpoint: str | None) -> tuple[nn.Module, nn.Module]:
    """(the binary model in eval mode, its full-precision twin for the int8 baseline)."""
    import bhvit

    if checkpoint:
        model, _ = bhvit.load_model(checkpoint)
        config = {**model.config.to_dict(), "precision": "fp"}
        return model.eval(), bhvit.build_model(config).eval()
    return (bhvit.create_model(name, precision=precision).eval(), bhvit.create_model(name, precision="fp").eval())


GEMM_CHANNELS = 64  # image channels of blinear_program's input (the runtime takes at most 64)


def blinear_program(m: int, k: int, n: int, seed: int = 0) -> tuple[runtime.Model, np.ndarray]:
    """The runtime's model of a program around one binary linear layer, and its input: m images of
    (64, 1, 1) floats become k channels (``patch_conv``), their signs (``sign_pack``) and the layer's n
    outputs (``blinear`` with random weights and scale). Profiled, the ``blinear`` kind times the binary GEMM
    of m rows alone; ``sign_pack`` the packing of its input."""
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    tensors = {
        "proj": rng.standard_normal((k, GEMM_CHANNELS, 1, 1), dtype=np.float32),
        "weight": pack_bits(rng.random((n, k)) < 0.5),
        "scale": rng.random(n, dtype=np.float32),
    }
    layer = [
        {"op": ops.PATCH_CONV.name, "in": "input", "out": "x", "kernel": 1, "weight": "proj"},
        {"op": ops.SIGN_PACK.name, "in": "x", "out": "xb"},
        {
            "op": ops.BLINEAR.name,
            "in": "xb",
            "out": "y",
            "in_features": k,
            "out_features": n,
            "weight": "weight",
            "scale": "scale",
        },
    ]
    for op in layer:
        ops.check(op)
    program = {"input": [GEMM_CHANNELS, 1, 1], "output": "y", "num_classes": n, "ops": layer}
    prep = {"mean": [0.0] * GEMM_CHANNELS, "std": [1.0] * GEMM_CHANNELS, "resize": 1}
    meta = Program(program, tensors, {"preprocess": json.dumps(prep)}).file_metadata()
    model = runtime.load_bytes(save(tensors, metadata=meta), f"blinear {m}x{k}x{n}")
    return model, rng.standard_normal((m, GEMM_CHANNELS, 1, 1), dtype=np.float32)


def op_seconds(model: runtime.Model, x: np.ndarray, seconds: float) -> dict[str, float]:
    """Per op kind, the least seconds of profiled runs of ``model`` on ``x`` over about ``seconds`` (after a
    warm-up run)."""
    model.run(x)
    best: dict[str, float] = {}
    start = time.perf_counter()
    while not best or time.perf_counter() - start < seconds:
        for kind, t in model.run_profiled(x)[1].items():
            best[kind] = min(t, best.get(kind, float("inf")))
    return best


def kernel_peak(threads: int, m: int = 3136, k: int = 512, n: int = 512, seconds: float = 0.3) -> float:
    """Binary multiply-accumulates per second of the runtime's binary GEMM on an (m, k) x (k, n) problem (a
    stage-1 sized MLP layer, :func:`blinear_program`), on the current ISA and ``threads`` threads."""
    model, x = blinear_program(m, k, n)
    previous = runtime.get_num_threads()
    runtime.set_num_threads(threads)
    try:
        return m * k * n / op_seconds(model, x, seconds)[ops.BLINEAR.name]
    finally:
        runtime.set_num_threads(previous)


def bench_one(
    name: str,
    precision: str,
    batch: int,
    threads: int,
    rounds: int,
    checkpoint: str | None = None,
    onnx: bool = True,
    workdir: Path = Path("out"),
) -> dict[str, Any]:
    """One row: latencies of the compared methods, speedups, top-1 agreement, the runtime's per-op-kind
    profile and its share of the ideal binary time."""
    from bhvit.profile import profile_model

    model, model_fp = build(name, precision, checkpoint)
    packed = pack(model)
    cfg = model.config
    x = torch.randn(batch, cfg.in_chans, *cfg.img_size)
    with torch.inference_mode():
        agree = bool(torch.equal(model(x).argmax(1), packed(x).argmax(1)))
        q8 = int8_dynamic(model_fp)
        fns: dict[str, Callable[[], Any]] = {
            "fp32_sim": lambda: model(x),
            "packed": lambda: packed(x),
            "int8_dynamic": lambda: q8(x),
        }
        ort = onnx_runner(model, x, workdir) if onnx else None
        if ort is not None:
            fns["onnxruntime_fp32"] = ort
        times = interleaved(fns, rounds, min_round=0.0 if batch > 1 else 0.3)
        with packed.profile() as layer_times:
            packed(x)
    peak = kernel_peak(threads)
    ideal = profile_model(model).bops * batch / peak
    per_op = {k: v * 1e3 for k, v in sorted(layer_times.items(), key=lambda kv: -kv[1])}
    row: dict[str, Any] = {
        "model": checkpoint or name,
        "precision": cfg.precision,
        "batch": batch,
        "threads": threads,
        "top1_agree": agree,
        "packed_layers_ms": per_op,
        "kernel_peak_gbops": peak / 1e9,
        "ideal_binary_ms": ideal * 1e3,
        "ideal_share": ideal / times["packed"],
    }
    row.update({f"{k}_ms": v * 1e3 for k, v in times.items()})
    row["speedup_vs_fp32"] = times["fp32_sim"] / times["packed"]
    row["speedup_vs_int8"] = times["int8_dynamic"] / times["packed"]
    row["cpu_speedup_vs_fp32"] = times["fp32_sim_cpu"] / times["packed_cpu"]
    return row


COLUMNS = [
    ("model", "model", ""),
    ("precision", "precision", ""),
    ("batch", "B", ""),
    ("threads", "thr", ""),
    ("fp32_sim_ms", "fp32 sim ms", ".1f"),
    ("int8_dynamic_ms", "int8 dyn ms", ".1f"),
    ("packed_ms", "packed ms", ".1f"),
    ("speedup_vs_fp32", "x fp32", ".2f"),
    ("speedup_vs_int8", "x int8", ".2f"),
    ("fp32_sim_cpu_ms", "fp32 cpu ms", ".1f"),
    ("packed_cpu_ms", "packed cpu ms", ".1f"),
    ("cpu_speedup_vs_fp32", "x fp32 cpu", ".2f"),
    ("ideal_share", "ideal %", ".0%"),
    ("top1_agree", "top-1 =", ""),
]


def report(rows: list[dict[str, Any]], profile: bool = True) -> str:
    """The table of rows, plus (``profile``) one line per row: the runtime's time per op kind and its
    share of the ideal binary time."""
    cols = list(COLUMNS)
    if all("onnxruntime_fp32_ms" in r for r in rows):
        cols.insert(6, ("onnxruntime_fp32_ms", "ort ms", ".1f"))
    if not profile:
        return format_table(rows, cols)
    lines = [
        format_table(rows, cols),
        "",
        "packed runtime, time per op kind (ms, one forward); ideal = BOPs at the measured kernel peak:",
    ]
    for r in rows:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r["packed_layers_ms"].items())
        lines.append(
            f"  {r['model']} {r['precision']} B={r['batch']} threads={r['threads']}: {parts}; ideal "
            f"{r['ideal_binary_ms']:.1f} ms at {r['kernel_peak_gbops']:.0f} G bit-MAC/s "
            f"= {r['ideal_share']:.0%} of the forward"
        )
    return "\n".join(lines)


def bench_grid(
    names: Sequence[str],
    precisions: Sequence[str],
    batches: Sequence[int],
    threads: Sequence[int],
    rounds: int = 3,
    checkpoint: str | None = None,
    onnx: bool = True,
    workdir: Path = Path("out"),
) -> list[dict[str, Any]]:
    """:func:`bench_one` over threads x models x precisions x batches; with ``checkpoint`` the one model is
    that checkpoint at its own precision (``names`` and ``precisions`` are ignored)."""
    rows = []
    for t in threads:
        torch.set_num_threads(t)
        runtime.set_num_threads(t)
        for name in [checkpoint] if checkpoint else names:
            for precision in ["binary"] if checkpoint else precisions:
                rows += [
                    bench_one(name, precision, b, t, rounds, checkpoint=checkpoint, onnx=onnx, workdir=workdir)
                    for b in batches
                ]
    return rows


def bench_packed(
    path: str | Path,
    references: dict[str, str | Path] | None = None,
    batches: Sequence[int] = (1, 32),
    threads: Sequence[int | None] = (1, None),
    rounds: int = 3,
    min_round: float = 0.3,
) -> list[dict[str, Any]]:
    """Latency of the packed file ``path`` in the runtime, and of each float checkpoint of ``references``
    (name -> path, e.g. the checkpoint it was packed from) in PyTorch fp32, on random images of the file's
    input shape; one row per thread count and batch: ``packed_ms``, ``<name>_ms`` and ``speedup_vs_<name>``
    (best round, :func:`interleaved`). A thread count of None is the runtime's default (the CPUs this process
    may use); torch runs on the same count as the runtime in every row."""
    from bhvit.checkpoint import load_model

    model = runtime.load(path)
    floats = {name: load_model(ckpt)[0].eval() for name, ckpt in (references or {}).items()}
    default = runtime.get_num_threads()
    torch_before = torch.get_num_threads()
    rng = np.random.default_rng(0)
    rows = []
    counts = {default if t is None else int(t): t is None for t in threads}  # a repeated count runs once
    try:
        for n, is_default in counts.items():
            runtime.set_num_threads(n)
            torch.set_num_threads(n)
            for b in batches:
                x = rng.standard_normal((b, *model.input_shape), dtype=np.float32)
                xt = torch.from_numpy(x)
                fns: dict[str, Callable[[], Any]] = {"packed": lambda x=x: model.run(x)}
                for name, fm in floats.items():
                    fns[name] = lambda fm=fm, xt=xt: fm(xt)
                with torch.inference_mode():
                    times = interleaved(fns, rounds, min_round=min_round if b == 1 else 0.0)
                row: dict[str, Any] = {"threads": n, "default_threads": is_default or n == default, "batch": b}
                row.update({f"{k}_ms": v * 1e3 for k, v in times.items() if not k.endswith("_cpu")})
                row.update({f"speedup_vs_{name}": times[name] / times["packed"] for name in floats})
                rows.append(row)
    finally:
        runtime.set_num_threads(default)
        torch.set_num_threads(torch_before)
    return rows


def packed_report(rows: list[dict[str, Any]], references: Sequence[str] = ()) -> str:
    """The rows of :func:`bench_packed` as a table: ms per call of the packed runtime and of each reference,
    and the runtime's speed-up over each."""
    cols = [("threads", "threads", ""), ("batch", "batch", ""), ("packed_ms", "packed ms", ".2f")]
    for name in references:
        cols += [(f"{name}_ms", f"{name} ms", ".2f"), (f"speedup_vs_{name}", f"x {name}", ".2f")]
    shown = [{**r, "threads": f"{r['threads']}{' (default)' if r['default_threads'] else ''}"} for r in rows]
    return format_table(shown, cols)
