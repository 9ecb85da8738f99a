"""TokenBatchNorm with cross-rank statistics: two gloo processes equal one process on the whole batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bhvit.layers import TokenBatchNorm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, x: torch.Tensor, g: torch.Tensor, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        bn = TokenBatchNorm(x.shape[-1])
        bn.sync = True
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        part = x.chunk(world)[rank].clone().requires_grad_(True)
        y = bn.train()(part)
        y.backward(g.chunk(world)[rank])
        torch.save(
            {
                "y": y.detach(),
                "gx": part.grad,
                "gw": bn.weight.grad,
                "gb": bn.bias.grad,
                "rm": bn.running_mean,
                "rv": bn.running_var,
            },
            os.path.join(out_dir, f"{rank}.pt"),
        )
        # Both ranks past their last collective before either tears gloo down: without it a rank that
        # destroys the group while its peer still talks to it aborted once in a CI-like run under load
        # ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_process_sync_batchnorm_equals_full_batch(tmp_path):
    torch.manual_seed(1)
    x = torch.randn(4, 5, 6, 8) * 2 + 1  # (B, H, W, C)
    g = torch.randn_like(x)
    mp.start_processes(_worker, args=(2, _free_port(), x, g, str(tmp_path)), nprocs=2, start_method="spawn")
    parts = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]

    torch.manual_seed(0)
    ref = TokenBatchNorm(8)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    xr = x.clone().requires_grad_(True)
    y = ref.train()(xr)
    y.backward(g)
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([p["gx"] for p in parts]), xr.grad, rtol=1e-4, atol=1e-5)
    # each rank holds its share of the parameter gradient; DDP's all-reduce sums them
    torch.testing.assert_close(parts[0]["gw"] + parts[1]["gw"], ref.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(parts[0]["gb"] + parts[1]["gb"], ref.bias.grad, rtol=1e-4, atol=1e-5)
    for p in parts:
        torch.testing.assert_close(p["rm"], ref.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p["rv"], ref.running_var, rtol=1e-5, atol=1e-6)
