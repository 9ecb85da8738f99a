"""torch.compile and export of every precision at a small size (issue: BHViT as a drop-in backbone).

Fast: dynamo captures the whole forward as one graph in train mode (after LSQ's first-batch set-up) and
in eval mode, so torch.compile never falls back to eager mid-model; ``bhvit train --compile`` runs.
Slow (``-m slow``): inductor-compiled eval and training steps equal eager ones; torch.export with a
dynamic batch. ONNX export of every precision (dynamic batch, checked with onnxruntime) is in
tests/test_cli.py; ``bhvit train --compile`` in tests/train/test_compile_run.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bhvit
from bhvit.models.bhvit import PRECISIONS


def small(precision: str, attn_quant: str = "lsq") -> torch.nn.Module:
    torch.manual_seed(0)
    return bhvit.create_model(
        "bhvit_test", precision=precision, attn_quant=attn_quant, img_size=32, window_size=1, num_classes=10
    )


def batch(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_one_graph_in_train_and_eval(precision: str) -> None:
    import torch._dynamo

    model = small(precision).train()
    x, _ = batch()
    model(x)  # the first training batch sets up LSQ (reads its buffer once)
    for mode in (True, False):
        explained = torch._dynamo.explain(model.train(mode))(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        assert explained.graph_count == 1


def test_lsq_setup_reads_its_buffer_once_per_load() -> None:
    """The LSQ quantizer initialises on the first training batch, not again, and again after a state with
    ``init_state == 0`` is loaded (its Python mirror of the buffer is refreshed on load)."""
    model = small("binary").train()
    quantizer = next(m for m in model.modules() if isinstance(m, bhvit.quant.LSQAttentionQuantizer))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    x, _ = batch()
    model(x)
    first = quantizer.zero_point.detach().clone()  # 0.1·min(3A): depends on the batch (α does not: rows sum to 1)
    assert quantizer.init_state.item() == 1 and not torch.equal(first, torch.zeros_like(first))
    other, _ = batch(seed=2)  # (a scaled x would not do: q and k are normalised before the scores)
    model(other)
    assert torch.equal(quantizer.zero_point.detach(), first)  # not re-initialised from the new batch
    model.load_state_dict(fresh)
    model(other)
    assert quantizer.init_state.item() == 1 and not torch.equal(quantizer.zero_point.detach(), first)


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
def test_inductor_eval_and_train_step_match_eager(precision: str) -> None:
    x, y = batch()
    eager, compiled = small(precision).train(), small(precision).train()
    step = torch.compile(lambda m, a, b: F.cross_entropy(m(a), b), dynamic=False)
    for _ in range(2):  # the first step also sets up LSQ
        want = F.cross_entropy(eager(x), y)
        got = step(compiled, x, y)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        want.backward()
        got.backward()
        for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
            if a.grad is not None:
                torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-4, msg=name)
            a.grad, b.grad = None, None
    eager.eval(), compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(compiled, dynamic=False)(x), eager(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
def test_torch_export_with_a_dynamic_batch(precision: str) -> None:
    model = small(precision).eval()
    x, _ = batch(2)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    for n in (1, 5):
        xn, _ = batch(n, seed=n)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(xn), model(xn), rtol=1e-5, atol=1e-5)
