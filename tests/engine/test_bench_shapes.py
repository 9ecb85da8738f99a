"""The GEMM benchmark covers exactly the binary linear shapes the model runs (SPEC §1-2)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import bhvit

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # the scripts are not a package
from bench_gemm import model_shapes  # noqa: E402


def test_gemm_benchmark_shapes_match_the_model() -> None:
    model = bhvit.create_model("bhvit_tiny", precision="binary", depths=(1, 1, 1, 1)).eval()  # shapes: any depth
    seen: set[tuple[int, int, int]] = set()

    def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        k = module.in_features
        seen.add((args[0].numel() // k, k, module.out_features))

    handles = [
        m.register_forward_pre_hook(record)
        for _, m in bhvit.quant.binary_weight_layers(model)
        if isinstance(m, torch.nn.Linear)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for h in handles:
        h.remove()
    assert {(s["m"], s["k"], s["n"]) for s in model_shapes(224, 1)} == seen
