"""One training step of binary BHViT-Tiny at 224 px, batch 32, on N CPU threads: time and peak memory.

Issue 3, item 0: the authors' code takes 37 s and 12.4 GB (peak RSS) for this step on the 2-core
reference machine; the goal is ≤ 2/3 of the time and ≤ 1/2 of the memory. Each measurement runs in a
fresh subprocess so that its peak resident set size (``ru_maxrss``) is its own.

A step is: forward, cross-entropy, backward, AdamW update (zero_grad + step), on random images.
The first step (which also initialises LSQ and allocates optimizer state) and the median of the
following steps are reported.

    python benchmarks/bench_train_step.py                 # ours, 2 threads, 3 steps
    python benchmarks/bench_train_step.py --json out.json
    # side by side with the authors' code (a checkout of github.com/IMRL/BHViT; transformers and timm
    # are replaced by minimal stand-ins for the few symbols the model file imports)
    python benchmarks/bench_train_step.py --authors-repo /path/to/BHViT
    # issue 3 item 7, on a GPU: bhvit_small at 224 with fp16 autocast + GradScaler, 300 steps
    python benchmarks/bench_train_step.py --device cuda --amp --arch bhvit_small --batch 128 --steps 300
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
import types

AUTHORS_REFERENCE = {"step_s": 37.0, "peak_rss_gb": 12.4, "source": "issue 3 (measured on the reference machine)"}


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

    mods = {name: types.ModuleType(name) for name in (
        "transformers", "transformers.activations", "transformers.modeling_outputs", "transformers.utils",
        "transformers.utils.logging", "timm", "timm.models", "timm.models.layers")}
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


def authors_model(repo: str, arch: str):
    """The authors' binary model (``--replace_ln_bn``, shift3/5, no ``--some_fp``), 1000 classes."""
    _install_stand_ins()
    sys.path.insert(0, repo)
    import models  # the authors' models.py

    args = argparse.Namespace(drop_path=0.0, nb_classes=1000, shift3=True, shift5=True, replace_ln_bn=True,
                              disable_layerscale=False, enable_cls_token=False, gsb=False, recu=False,
                              some_fp=False)
    config = {"bhvit_tiny": "BHViT_tiny", "bhvit_small": "BHViT"}[arch]
    return models.get_model(args, f"{repo}/configs/{config}", "dbhvit", 1, 1)


def measure(arch: str, precision: str, img: int, batch: int, threads: int, steps: int,
            device: str = "cpu", amp: bool = False, grad_checkpointing: bool = False,
            authors_repo: str | None = None) -> dict:
    """Run in this process: build, then time ``steps`` optimizer steps. Returns times and peak memory."""
    import torch

    import bhvit

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    if authors_repo:
        model = authors_model(authors_repo, arch).to(dev)
        forward = lambda inp: model(inp).logits  # noqa: E731
    else:
        model = bhvit.create_model(arch, precision=precision, img_size=img).to(dev)
        model.set_grad_checkpointing(grad_checkpointing)
        forward = model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cuda") if amp and dev.type == "cuda" else None
    x = torch.randn(batch, 3, img, img, device=dev)
    y = torch.randint(0, 1000, (batch,), device=dev)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
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
    rest = sorted(times[1:]) or times
    median = rest[len(rest) // 2]
    out = {
        "code": "authors" if authors_repo else "bhvit", "arch": arch, "precision": precision, "img_size": img,
        "batch": batch, "threads": threads,
        "device": device, "amp": amp, "steps": steps, "grad_checkpointing": grad_checkpointing,
        "first_step_s": round(times[0], 3), "median_step_s": round(median, 4),
        "images_per_s": round(batch / median, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "rss_after_build_gb": round(rss_before, 3),
    }
    if dev.type == "cuda":
        out["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="bhvit_tiny")
    p.add_argument("--precision", default="binary")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="fp16 autocast + GradScaler on CUDA, bf16 on CPU")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations in backward")
    p.add_argument("--authors-repo", help="also measure the authors' model from this checkout")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.inner:
        print(json.dumps(measure(args.arch, args.precision, args.img_size, args.batch, args.threads, args.steps,
                                 args.device, args.amp, args.grad_checkpointing, args.authors_repo)))
        return 0
    base = [sys.executable, __file__, "--inner", "--arch", args.arch, "--precision", args.precision,
            "--img-size", str(args.img_size), "--batch", str(args.batch), "--threads", str(args.threads),
            "--steps", str(args.steps), "--device", args.device] + (["--amp"] if args.amp else [])

    def run(extra: list[str]) -> dict:
        out = subprocess.run(base + extra, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    ours = run(["--grad-checkpointing"] if args.grad_checkpointing else [])
    if args.authors_repo:
        ref = run(["--authors-repo", args.authors_repo])
        ref_time, ref_mem = ref["median_step_s"], ref["peak_rss_gb"]
    elif (args.device, args.arch, args.img_size, args.batch) == ("cpu", "bhvit_tiny", 224, 32):
        ref = AUTHORS_REFERENCE
        ref_time, ref_mem = ref["step_s"], ref["peak_rss_gb"]
    else:
        ref = None
    result: dict = {"ours": ours}
    if ref is not None:
        result |= {
            "authors": ref,
            "time_ratio": round(ours["median_step_s"] / ref_time, 3),
            "memory_ratio": round(ours["peak_rss_gb"] / ref_mem, 3),
            "targets": {"time_ratio": round(2 / 3, 3), "memory_ratio": 0.5},
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
