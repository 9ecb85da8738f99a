"""One training step of binary BHViT-Tiny at 224 px on N CPU threads, ours beside the authors': time and peak memory.

Issue 12 item 3: our default step must take at most half the authors' time at batch 8 and at batch 32, and
with ``set_grad_checkpointing()`` at most 0.45x their peak memory. Every measurement runs in a fresh
subprocess so that its peak resident set size (``ru_maxrss``) is its own, and the variants (the authors'
model, ours, ours with checkpointing, optionally ours compiled) run interleaved, round after round, so that
machine noise hits them alike. Ratios are ours / authors per round; the table gives their median.

A step is: forward, cross-entropy, backward, AdamW update (zero_grad + step), on random images.
The first step (which also initialises LSQ, allocates optimizer state and, compiled, compiles) is
reported apart; the step time is the median of the following steps.

    # side by side with the authors' code (a checkout of github.com/IMRL/BHViT; transformers and timm
    # are replaced by minimal stand-ins for the few symbols the model file imports)
    python benchmarks/bench_train_step.py --authors-repo /path/to/BHViT            # batch 8 and 32, GSB
    python benchmarks/bench_train_step.py --authors-repo /path/to/BHViT --variants authors ours ours_compiled
    # torch on its AVX2 code paths (what most users have):
    MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 \\
        python benchmarks/bench_train_step.py --authors-repo /path/to/BHViT \\
        --json benchmarks/results/bench_train_step_avx2.json
    # ours only, on a GPU: bhvit_small at 224 with fp16 autocast + GradScaler
    python benchmarks/bench_train_step.py --variants ours --device cuda --amp --arch bhvit_small --batches 128 \\
        --steps 300
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # measure this checkout's bhvit, installed or not
    sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "bench_train_step.json"
TARGETS = {"time_ratio": 0.5, "checkpointed_memory_ratio": 0.45}  # issue 12 item 3
VARIANTS = {  # name -> measure() keywords
    "authors": {"authors": True},
    "ours": {},
    "ours_checkpointed": {"grad_checkpointing": True},
    "ours_compiled": {"compile": True},
    "ours_compiled_checkpointed": {"compile": True, "grad_checkpointing": True},
}
ISA_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "BHVIT_ISA")


# ---------------------------------------------------------------------------------------------
# The authors' model, built from their repository with stand-ins for transformers / timm
# ---------------------------------------------------------------------------------------------
def _install_stand_ins() -> None:
    """Minimal ``transformers`` and ``timm`` modules exposing only what ``transformer/BHViT.py`` and
    ``models.py`` import (output containers, GELU, a JSON config reader, trunc-normal init)."""
    import torch.nn as nn

    class Out(dict):  # HF ModelOutput: attribute access and integer indexing over non-None fields
        def __init__(self, **kw):
            super().__init__(**kw)
            self._values = tuple(v for v in kw.values() if v is not None)

        def __getattr__(self, k):
            try:
                return self[k]
            except KeyError as e:
                raise AttributeError(k) from e

        def __getitem__(self, k):
            return self._values[k] if isinstance(k, int | slice) else dict.__getitem__(self, k)

    class ViTConfig(types.SimpleNamespace):
        @classmethod
        def from_pretrained(cls, path):
            with open(f"{path}/config.json") as f:
                c = cls(**json.load(f))
            c.use_return_dict, c.output_attentions, c.output_hidden_states = True, False, False
            c.chunk_size_feed_forward = 0
            return c

    class DropPath(nn.Module):  # drop-path is 0 in the benchmark
        def __init__(self, p=0.0):
            super().__init__()

        def forward(self, x):
            return x

    mods = {
        name: types.ModuleType(name)
        for name in (
            "transformers",
            "transformers.activations",
            "transformers.modeling_outputs",
            "transformers.utils",
            "transformers.utils.logging",
            "timm",
            "timm.models",
            "timm.models.layers",
        )
    }
    mods["transformers"].ViTConfig = ViTConfig
    mods["transformers.activations"].ACT2FN = {"gelu": nn.GELU()}
    for n in ("BaseModelOutput", "BaseModelOutputWithPooling", "ImageClassifierOutput"):
        setattr(mods["transformers.modeling_outputs"], n, type(n, (Out,), {}))
    mods["transformers.utils.logging"].get_logger = logging.getLogger
    mods["transformers.utils"].logging = mods["transformers.utils.logging"]
    layers = mods["timm.models.layers"]
    layers.trunc_normal_, layers.DropPath = nn.init.trunc_normal_, DropPath
    layers.to_2tuple = lambda x: tuple(x) if isinstance(x, tuple | list) else (x, x)
    sys.modules.update(mods)


def authors_model(repo: str, arch: str, gsb: bool):
    """The authors' binary model (``--replace_ln_bn``, shift3/5, no ``--some_fp``, ``--gsb`` if asked), 1000 classes."""
    _install_stand_ins()
    sys.path.insert(0, repo)
    import models  # the authors' models.py

    args = argparse.Namespace(
        drop_path=0.0,
        nb_classes=1000,
        shift3=True,
        shift5=True,
        replace_ln_bn=True,
        disable_layerscale=False,
        enable_cls_token=False,
        gsb=gsb,
        recu=False,
        some_fp=False,
    )
    config = {"bhvit_tiny": "BHViT_tiny", "bhvit_small": "BHViT"}[arch]
    return models.get_model(args, f"{repo}/configs/{config}", "dbhvit", 1, 1)


def measure(
    arch: str,
    precision: str,
    attn_quant: str,
    img: int,
    batch: int,
    threads: int,
    steps: int,
    device: str = "cpu",
    amp: bool = False,
    grad_checkpointing: bool = False,
    compile: bool = False,
    authors_repo: str | None = None,
) -> dict:
    """Run in this process: build, then time ``steps`` optimizer steps. Returns times and peak memory."""
    import torch

    import bhvit
    from bhvit.models.bhvit import choose_window_size

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    if authors_repo:
        model = authors_model(authors_repo, arch, gsb=attn_quant == "gsb").to(dev)
        forward = lambda inp: model(inp).logits  # noqa: E731
    else:
        model = bhvit.create_model(
            arch, precision=precision, attn_quant=attn_quant, img_size=img, window_size=choose_window_size(img)
        ).to(dev)
        model.set_grad_checkpointing(grad_checkpointing)
        forward = torch.compile(model, dynamic=False) if compile else model  # as `bhvit train --compile`
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cuda") if amp and dev.type == "cuda" else None
    x = torch.randn(batch, 3, img, img, device=dev)
    y = torch.randint(0, 1000, (batch,), device=dev)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast(dev.type, dtype=torch.float16 if dev.type == "cuda" else torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(forward(x).float(), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    rest = sorted(times[1:]) or times
    out = {
        "code": "authors" if authors_repo else "bhvit",
        "arch": arch,
        "precision": precision,
        "attn_quant": attn_quant,
        "img_size": img,
        "batch": batch,
        "threads": threads,
        "device": device,
        "amp": amp,
        "steps": steps,
        "grad_checkpointing": grad_checkpointing,
        "compile": compile,
        "first_step_s": round(times[0], 3),
        "median_step_s": round(rest[len(rest) // 2], 4),
        "median_cpu_s": round(sorted(cpu[1:] or cpu)[len(rest) // 2], 4),
        "images_per_s": round(batch / rest[len(rest) // 2], 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "rss_after_build_gb": round(rss_before, 3),
        "loss": round(float(loss), 5),
    }
    if dev.type == "cuda":
        out["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return out


def machine() -> dict:
    """What ran the benchmark: CPU model, cores, torch and the ISA it uses, ISA overrides in the environment."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_env": {k: os.environ[k] for k in ISA_ENV if k in os.environ},
        "python": platform.python_version(),
    }


def _run_inner(args: argparse.Namespace, variant: str, batch: int) -> dict:
    """One measurement in a fresh subprocess (its own peak RSS); a failure is one clear line."""
    keywords = VARIANTS[variant]
    cmd = [
        sys.executable,
        __file__,
        "--inner",
        "--arch",
        args.arch,
        "--precision",
        args.precision,
        "--attn-quant",
        args.attn_quant,
        "--img-size",
        str(args.img_size),
        "--batches",
        str(batch),
        "--threads",
        str(args.threads),
        "--steps",
        str(args.steps),
        "--device",
        args.device,
    ]
    cmd += ["--amp"] * args.amp + ["--grad-checkpointing"] * keywords.get("grad_checkpointing", False)
    cmd += ["--compile"] * keywords.get("compile", False)
    cmd += ["--authors-repo", args.authors_repo] if keywords.get("authors") else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"error: the {variant} measurement at batch {batch} failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict], variants: list[str], batches: list[int]) -> list[dict]:
    """Per batch and variant: median step time and peak RSS over rounds; ratios to the authors' run of the
    same round, then their median."""
    rows = []
    for batch in batches:
        ref = {r["round"]: r for r in runs if r["batch"] == batch and r["variant"] == "authors"}
        for variant in variants:
            mine = [r for r in runs if r["batch"] == batch and r["variant"] == variant]
            if not mine:
                continue
            row = {
                "batch": batch,
                "variant": variant,
                "rounds": len(mine),
                "median_step_s": statistics.median(r["median_step_s"] for r in mine),
                "median_cpu_s": statistics.median(r["median_cpu_s"] for r in mine),
                "first_step_s": statistics.median(r["first_step_s"] for r in mine),
                "peak_rss_gb": statistics.median(r["peak_rss_gb"] for r in mine),
            }
            paired = [(r, ref[r["round"]]) for r in mine if r["round"] in ref]
            if paired and variant != "authors":
                row["time_ratio"] = round(
                    statistics.median(a["median_step_s"] / b["median_step_s"] for a, b in paired), 3
                )
                row["memory_ratio"] = round(
                    statistics.median(a["peak_rss_gb"] / b["peak_rss_gb"] for a, b in paired), 3
                )
                row["cpu_time_ratio"] = round(
                    statistics.median(a["median_cpu_s"] / b["median_cpu_s"] for a, b in paired), 3
                )
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """The summary as a Markdown table."""
    lines = [
        "| batch | variant | step (s) | first step (s) | peak RSS (GB) | time ratio | memory ratio | CPU-time ratio |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        keys = ("time_ratio", "memory_ratio", "cpu_time_ratio")
        ratios = [f"{r[k]:.2f}" if k in r else "–" for k in keys] if "time_ratio" in r else ["1", "1", "1"]
        lines.append(
            f"| {r['batch']} | {r['variant']} | {r['median_step_s']:.2f} | {r['first_step_s']:.1f} | "
            f"{r['peak_rss_gb']:.2f} | {' | '.join(ratios)} |"
        )
    return "\n".join(lines)


def _write_json(path: Path, result: dict) -> None:
    """Write ``result`` atomically: a temporary file beside ``path``, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="bhvit_tiny")
    p.add_argument("--precision", default="binary")
    p.add_argument("--attn-quant", default="gsb", choices=("gsb", "lsq"))
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="steps per measurement (the first is reported apart)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every variant")
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["authors", "ours", "ours_checkpointed"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="fp16 autocast + GradScaler on CUDA, bf16 on CPU")
    p.add_argument("--authors-repo", help="a checkout of the authors' code (needed by the 'authors' variant)")
    p.add_argument("--json", type=Path, default=RESULTS, help=f"write the result here (default {RESULTS})")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--grad-checkpointing", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.inner:
        print(
            json.dumps(
                measure(
                    args.arch,
                    args.precision,
                    args.attn_quant,
                    args.img_size,
                    args.batches[0],
                    args.threads,
                    args.steps,
                    args.device,
                    args.amp,
                    args.grad_checkpointing,
                    args.compile,
                    args.authors_repo,
                )
            )
        )
        return 0
    if "authors" in args.variants and not (args.authors_repo and Path(args.authors_repo, "models.py").is_file()):
        raise SystemExit(
            "error: the 'authors' variant needs --authors-repo PATH, a checkout of "
            "github.com/IMRL/BHViT (with models.py); or leave 'authors' out of --variants"
        )
    if args.steps < 2 or args.rounds < 1:
        raise SystemExit("error: --steps must be >= 2 (the first step is reported apart) and --rounds >= 1")
    runs, info = [], machine()
    for rnd in range(args.rounds):
        for batch in args.batches:
            for variant in args.variants:
                run = _run_inner(args, variant, batch) | {"variant": variant, "round": rnd}
                print(
                    f"round {rnd} batch {batch} {variant}: {run['median_step_s']} s, {run['peak_rss_gb']} GB",
                    file=sys.stderr,
                    flush=True,
                )
                runs.append(run)
                done = [b for b in args.batches if any(r["batch"] == b for r in runs)]
                rows = summarise(runs, args.variants, done)  # written after every run: a long run keeps its part
                _write_json(
                    args.json,
                    {
                        "machine": info,
                        "threads": args.threads,
                        "targets": TARGETS,
                        "complete": len(runs) == args.rounds * len(args.batches) * len(args.variants),
                        "summary": rows,
                        "runs": runs,
                    },
                )
    print(table(rows))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
