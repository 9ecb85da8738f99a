"""The packed BHViT forward: binary operations on packed bits in native code, float parts in torch.

Reads only :class:`bhvit.engine.packer.PackedParts` (config, float tensors, binary layers); it imports
neither the model nor the training code. Layout: tokens are channels-last, ``(B, H, W, C)`` maps and
``(B, N, C)`` token tensors, as in the float model.

Per block, the binary layers run fused (SPEC §2, §6; BatchNorm models):

* MLP ``fc1``: ``RPReLU(BN(α·x_b W_bᵀ) + concat([x]·r))`` is one kernel call (BN folded into a per-channel
  multiply-add, the tiled residual and the RPReLU in the output transform); ``fc2`` likewise with the
  ``AvgPool1d_r`` residual;
* MSGDC: the three dilated grouped 3×3 convolutions each write ``RPReLU_d(α·conv + bias)`` accumulated
  into one buffer; zero padding is exact (only valid taps count);
* attention: ``q·kᵀ`` on packed heads, softmax in torch, ``Â`` decomposed into three binary masks with
  scalar weights (LSQ: ``[l ≥ 1], [l ≥ 2], [l ≥ 3]`` with weight α_h; GSB: ``base, U = T1+T2, T2`` with
  weights ``α, α(α2−1), α(α3−α2)``), ``Â·v`` as AND-popcount products;
* binary downsampling: 2×2 stride-2 convolution with BN, tiled AvgPool residual and RPReLU fused.

LayerNorm models (``norm='ln'``) run the same kernels with only α fused and the norm in torch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bhvit.engine import kernels as K
from bhvit.engine.packer import PackedParts

TOKEN_NORM_EPS = 1e-5  # the attention's nn.LayerNorm(dim) default
SMALL_BATCH = 2  # up to this batch the float parts run on one torch thread (see PackedModel)


def _np(t: Tensor) -> np.ndarray:
    """Zero-copy float32 numpy view of a CPU tensor (copies only if not contiguous)."""
    return t.detach().contiguous().numpy()


def _nchw(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2)


def _nhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1)


@dataclass
class _Norm:
    """An eval-mode norm over the last dim: BatchNorm with running stats, or LayerNorm."""

    kind: str
    weight: Tensor
    bias: Tensor
    mean: Tensor | None
    var: Tensor | None
    eps: float

    def __call__(self, x: Tensor) -> Tensor:
        c = x.shape[-1]
        if self.kind == "ln":
            return F.layer_norm(x, (c,), self.weight, self.bias, self.eps)
        return F.batch_norm(
            x.reshape(-1, c), self.mean, self.var, self.weight, self.bias, False, 0.0, self.eps
        ).reshape(x.shape)

    def fold(self) -> tuple[np.ndarray, np.ndarray]:
        """BN as ``y = a·x + b``: ``a = w/sqrt(var + eps)``, ``b = bias − mean·a``."""
        a = self.weight / torch.sqrt(self.var + self.eps)
        return _np(a), _np(self.bias - self.mean * a)


@dataclass
class _RPReLU:
    slope: Tensor
    b1: Tensor
    b2: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        y = x - self.b1
        return torch.where(y > 0, y, y * self.slope) + self.b2

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _np(self.slope), _np(self.b1), _np(self.b2)


@dataclass
class _BinaryOp:
    """A binary layer ready to run: weight panels, α, and (BN models) the folded scale and bias."""

    panels: np.ndarray
    alpha: np.ndarray
    meta: dict[str, Any]
    wpop: np.ndarray | None = None
    norm: _Norm | None = None
    scale: np.ndarray | None = None
    bias: np.ndarray | None = None
    nibbles: np.ndarray | None = None  # linear layers with k <= 256: the table kernels' weight layout

    def transform(self, norm: _Norm | None, conv_bias: np.ndarray | None) -> None:
        """Folds α, an optional BN and a conv bias into one per-channel multiply-add."""
        self.norm = norm
        self.scale, self.bias = self.alpha, conv_bias
        if norm is not None and norm.kind == "bn":
            a, b = norm.fold()
            self.scale = (self.alpha * a).astype(np.float32)
            self.bias = b if conv_bias is None else (conv_bias * a + b).astype(np.float32)

    @property
    def fused(self) -> bool:
        """True when the norm (if any) is folded, so residual and RPReLU can run in the kernel."""
        return self.norm is None or self.norm.kind == "bn"


class LegacyPackedModel:
    """The version-1 packed forward (native binary kernels, float parts in torch), kept to benchmark against
    the runtime: ``LegacyPackedModel(parts)(images) -> logits``; see the module docstring."""

    def __init__(self, parts: PackedParts, float_threads: int | None = None) -> None:
        """``float_threads``: torch threads for the float parts; None = auto: one thread for batches of
        up to ``SMALL_BATCH`` images (torch's intra-op parallelism on the small float tensors of such a
        forward costs more in thread wake-ups than it saves), torch's setting otherwise. The native
        kernels always use :func:`bhvit.engine.set_num_threads` threads on large enough work."""
        from bhvit.engine.fileformat import check_parts  # imported here: fileformat pulls in the checkpoint code

        check_parts(parts)  # every name, shape and record the forward reads exists and agrees with the config
        self.parts = parts
        self.float_threads = float_threads
        self.config = dict(parts.config)
        self.p = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in parts.floats.items()}
        self.ops: dict[str, _BinaryOp] = {}
        self._shift_cache: dict[str, tuple[list[int], np.ndarray] | None] = {}
        self._times: dict[str, float] | None = None
        for name, layer in parts.binary.items():
            op = _BinaryOp(K.to_panels(layer.bits), layer.alpha, layer.meta)
            if layer.meta["kind"] == "conv":
                op.panels, op.wpop = self._conv_panels(layer)
            else:
                op.nibbles = K.nibbles_for(op.panels, layer.meta["in"])
            self.ops[name] = op
        self._fold_all()

    # ---- construction -------------------------------------------------------------------------
    @staticmethod
    def _conv_panels(layer: Any) -> tuple[np.ndarray, np.ndarray]:
        meta, groups = layer.meta, layer.meta["groups"]
        taps, cg = meta["kernel"][0] * meta["kernel"][1], meta["in"] // groups
        from bhvit.engine.reference import unpack_bits_ref  # exact bit counts per tap

        bits = unpack_bits_ref(layer.bits, taps * cg).reshape(meta["out"], taps, cg)
        wpop = bits.sum(-1).astype(np.int32)
        return K.to_panels(layer.bits.reshape(groups, meta["out"] // groups, -1)), wpop

    def norm(self, name: str) -> _Norm:
        p = self.p
        if f"{name}.running_mean" in p:
            return _Norm(
                "bn",
                p[f"{name}.weight"],
                p[f"{name}.bias"],
                p[f"{name}.running_mean"],
                p[f"{name}.running_var"],
                float(self.config["norm_eps"]),
            )
        eps = TOKEN_NORM_EPS if name.endswith("token_norm") else float(self.config["norm_eps"])
        return _Norm("ln", p[f"{name}.weight"], p[f"{name}.bias"], None, None, eps)

    def act(self, name: str) -> _RPReLU:
        return _RPReLU(self.p[f"{name}.prelu.weight"], self.p[f"{name}.move1"], self.p[f"{name}.move2"])

    def _fold_all(self) -> None:
        norm_of = {
            "fc1": "norm1",
            "fc2": "norm2",
            "q": "norm_q",
            "k": "norm_k",
            "v": "norm_v",
            "proj": "norm_o",
            "conv": "norm",
        }
        for name, op in self.ops.items():
            parent, leaf = name.rsplit(".", 1)
            bias = self.parts.floats.get(f"{name}.bias")
            if leaf in norm_of:
                op.transform(self.norm(f"{parent}.{norm_of[leaf]}"), bias)
            else:  # the MSGDC convs: norm after the sum of branches
                op.transform(None, bias)

    # ---- per-layer timing ---------------------------------------------------------------------
    @contextmanager
    def profile(self) -> Iterator[dict[str, float]]:
        """``with packed.profile() as t: packed(x)`` fills t with seconds per op kind: binary linears by
        role (``linear.q``, ``linear.fc1``, …), ``conv.msgdc``, ``conv.downsample``, ``attention.core``
        (scores, softmax, masks, Â·v), ``shift``, and ``total``."""
        self._times = {}
        try:
            yield self._times
        finally:
            self._times = None

    @contextmanager
    def _timed(self, key: str) -> Iterator[None]:
        if self._times is None:
            yield
            return
        start = time.perf_counter()
        yield
        self._times[key] = self._times.get(key, 0.0) + time.perf_counter() - start

    # ---- binary layers ------------------------------------------------------------------------
    def linear(
        self,
        name: str,
        x: Tensor,
        move: Tensor | None,
        residual: Tensor | np.ndarray | None,
        act: _RPReLU | None,
        post: tuple[np.ndarray, np.ndarray] | None = None,
        out: np.ndarray | None = None,
        xb: np.ndarray | None = None,
    ) -> Tensor:
        """``post(act(norm(α·sign(x + move)·W_bᵀ) + residual))`` over the last dim of x; added into
        ``out`` (a float32 buffer of the output's size) when given. ``xb``: ``sign(x + move)`` already
        packed (M, KW), then x only gives the leading shape."""
        with self._timed("linear." + name.rsplit(".", 1)[1]):
            return self._linear(name, x, move, residual, act, post, out, xb)

    def _linear(
        self,
        name: str,
        x: Tensor,
        move: Tensor | None,
        residual: Tensor | np.ndarray | None,
        act: _RPReLU | None,
        post: tuple[np.ndarray, np.ndarray] | None,
        out: np.ndarray | None,
        xb: np.ndarray | None = None,
    ) -> Tensor:
        op = self.ops[name]
        k, n = op.meta["in"], op.meta["out"]
        if xb is None:
            xb = K.pack_rows(_np(x).reshape(-1, k), _np(move))
        res = None if residual is None else (residual if isinstance(residual, np.ndarray) else _np(residual))
        shape = (*x.shape[:-1], n)
        if op.fused:
            y = K.bgemm(
                xb,
                op.panels,
                n,
                k,
                scale=op.scale,
                bias=op.bias,
                residual=None if res is None else res.reshape(xb.shape[0], -1),
                rprelu=None if act is None else act.arrays(),
                post=post,
                out=None if out is None else out.reshape(xb.shape[0], n),
                accumulate=out is not None,
                nibbles=op.nibbles,
            )
            return torch.from_numpy(y).view(shape)
        y = op.norm(torch.from_numpy(K.bgemm(xb, op.panels, n, k, scale=op.scale, nibbles=op.nibbles)).view(shape))
        if res is not None:
            y = y + self._tile(torch.from_numpy(res).view(*shape[:-1], -1), n)
        y = y if act is None else act(y)
        y = y if post is None else y * torch.from_numpy(post[0]) + torch.from_numpy(post[1])
        if out is None:
            return y
        out += _np(y).reshape(out.shape)
        return torch.from_numpy(out).view(shape)

    @staticmethod
    def _tile(res: Tensor, n: int) -> Tensor:
        return torch.cat([res] * (n // res.shape[-1]), dim=-1)

    def _layerscale_arrays(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        if f"{name}.alpha" not in self.p:
            return None
        return _np(self.p[f"{name}.alpha"]), _np(self.p[f"{name}.move"])

    # ---- blocks -------------------------------------------------------------------------------
    def mlp_into(self, pre: str, x: Tensor, out: np.ndarray) -> None:
        """``out += LS(MLP(x))`` (SPEC §2 MLP) on tokens x (B, N, C); out is (B·N, C) float32.

        With a folded norm, ``fc1`` runs in packed mode (``kernels.bgemm_pack``): it returns ``fc2``'s
        packed input ``sign(H1 + m2)`` and the pooled residual ``AvgPool1d_r(H1)`` instead of the
        (B, N, rC) float map H1, the same bits and floats as computing H1 first."""
        op1, c = self.ops[f"{pre}.fc1"], x.shape[-1]
        n1 = op1.meta["out"]
        r = n1 // c  # AvgPool1d_r: (B, N, rC) -> (B, N, C)
        fc2 = (f"{pre}.fc2", self.p[f"{pre}.move2"], self.act(f"{pre}.act2"))
        post = self._layerscale_arrays(f"{pre}.ls")
        if op1.fused and n1 % r == 0 and 128 % r == 0:
            with self._timed("linear.fc1"):
                xb = K.pack_rows(_np(x).reshape(-1, c), _np(self.p[f"{pre}.move1"]))
                hb, pooled = K.bgemm_pack(
                    xb,
                    op1.panels,
                    n1,
                    c,
                    pack_bias=_np(fc2[1]),
                    mean_r=r,
                    scale=op1.scale,
                    bias=op1.bias,
                    residual=_np(x).reshape(xb.shape[0], c),
                    rprelu=self.act(f"{pre}.act1").arrays(),
                    nibbles=op1.nibbles,
                )
            self.linear(fc2[0], x, None, pooled, fc2[2], post=post, out=out, xb=hb)
            return
        h = self.linear(f"{pre}.fc1", x, self.p[f"{pre}.move1"], x, self.act(f"{pre}.act1"))
        pooled = K.group_mean(_np(h), r)
        self.linear(fc2[0], h, fc2[1], pooled, fc2[2], post=post, out=out)

    def shift_params(self, pre: str) -> tuple[list[int], np.ndarray] | None:
        """Kernels and stacked LayerScales (3·nk, 2, C) of a block's shift branches."""
        kernels = [k for k in (3, 5) if f"{pre}.ls_h{k}.alpha" in self.p]
        if not kernels:
            return None
        ls = [np.stack(self._layerscale_arrays(f"{pre}.ls_{a}{k}")) for k in kernels for a in "hwc"]
        return kernels, np.ascontiguousarray(np.stack(ls), dtype=np.float32)

    def mlp_and_shift(self, pre: str, x1: Tensor) -> Tensor:
        """``Y = MLP(norm2(X1)) + X1 + Shift(norm2(X1))`` on (B, H, W, C), in one buffer."""
        b, h, w, c = x1.shape
        xn = self.norm(f"{pre}.norm2")(x1)
        out = _np(x1).reshape(b * h * w, c).copy()
        self.mlp_into(f"{pre}.mlp", xn.reshape(b, h * w, c), out)
        shift = self._shift_cache.get(pre)
        if shift is None:
            shift = self._shift_cache[pre] = self.shift_params(f"{pre}.shift")
        if shift is not None:
            with self._timed("shift"):
                K.shift_add(out.reshape(b, h, w, c), _np(xn), *shift)
        return torch.from_numpy(out).view(b, h, w, c)

    def conv_block(self, pre: str, x: Tensor) -> Tensor:
        """Stage 1–2 block (MSGDC + MLP + shifts) on (B, H, W, C).

        ``X1 = X + norm(Σ_d RPReLU_d(conv_d))``: with BatchNorm, the norm ``a·s + b`` is applied per branch
        (``a·z_d``, plus ``b`` on the first) in each kernel's output transform, accumulating onto X.
        """
        b, h, w, c = x.shape
        xn = self.norm(f"{pre}.norm1")(x)
        mix = f"{pre}.mixer"
        xb = K.pack_rows(_np(xn).reshape(b * h * w, c), _np(self.p[f"{mix}.move"])).reshape(b, h, w, -1)
        norm = self.norm(f"{mix}.norm")
        folded = norm.kind == "bn"
        out = _np(x).reshape(b, h * w, c).copy() if folded else np.zeros((b, h * w, c), dtype=np.float32)
        a, beta = norm.fold() if folded else (None, None)
        i = 0
        while f"{mix}.convs.{i}" in self.ops:
            op, act = self.ops[f"{mix}.convs.{i}"], self.act(f"{mix}.acts.{i}").arrays()
            m = op.meta
            post = (a, beta if i == 0 else np.zeros_like(beta)) if folded else None
            with self._timed("conv.msgdc"):
                K.bconv(
                    xb,
                    c,
                    op.panels,
                    op.wpop,
                    c,
                    groups=m["groups"],
                    kernel=tuple(m["kernel"]),
                    stride=m["stride"],
                    pad=m["padding"],
                    dil=m["dilation"],
                    scale=op.scale,
                    bias=op.bias,
                    rprelu=act,
                    post=post,
                    out=out,
                    accumulate=True,
                )
            i += 1
        x1 = torch.from_numpy(out).view(b, h, w, c)
        if not folded:
            x1 = norm(x1) + x
        return self.mlp_and_shift(pre, x1)

    def attention_block(self, pre: str, x: Tensor) -> Tensor:
        """Stage 3–4 block (MSMHA + MLP + shifts) on (B, H, W, C)."""
        out = _np(x).copy()
        self.attention_into(f"{pre}.attn", self.norm(f"{pre}.norm1")(x), out)
        return self.mlp_and_shift(pre, torch.from_numpy(out))

    def attention_into(self, pre: str, x: Tensor, out: np.ndarray) -> None:
        """``out += MSMHA(x)`` (SPEC §2) for x (B, H, W, C)."""
        b, h, wd, c = x.shape
        w = int(self.config["window_size"])
        n_win = (h // w) * (wd // w)
        glob = self.global_tokens(pre, x).repeat_interleave(n_win, dim=0)  # (B·nW, P, C)
        hs = self.norm(f"{pre}.token_norm")(torch.cat([_window_split(x, w), glob], dim=1))  # (B', L, C)
        ctx = self.attention_context(pre, hs)  # (B', L, C)
        local = _window_merge(ctx[:, : w * w], w, b, h, wd)
        g = ctx[:, w * w :].reshape(b, n_win, h // w, wd // w, c).mean(dim=1)
        g = g[:, :, None, :, None, :].expand(b, h // w, w, wd // w, w, c).reshape(b, h, wd, c)
        mix = self.p[f"{pre}.mix"]
        o = local * mix + g * (1.0 - mix)
        self.linear(
            f"{pre}.proj",
            o,
            self.p[f"{pre}.move_o"],
            o,
            self.act(f"{pre}.act_o"),
            post=self._layerscale_arrays(f"{pre}.ls"),
            out=out,
        )

    def global_tokens(self, pre: str, x: Tensor) -> Tensor:
        w = int(self.config["window_size"])
        pad = 0 if self.config.get("aligned_pool") else (w - 1) // 2
        xc = _nchw(x)
        mx = _nhwc(F.max_pool2d(xc, w, w, pad)).flatten(1, 2)
        av = _nhwc(F.avg_pool2d(xc, w, w, pad)).flatten(1, 2)
        a = self.p[f"{pre}.pool.alpha"]
        return a * mx + (1.0 - a) * av

    def attention_context(self, pre: str, hs: Tensor) -> Tensor:
        """Binary attention core on (B', L, C) -> (B', L, C)."""
        mixed = {
            n: self.linear(f"{pre}.{n}", hs, self.p[f"{pre}.move_{n}"], hs, self.act(f"{pre}.act_{n}"))
            for n in ("q", "k", "v")
        }
        with self._timed("attention.core"):
            return self._attention_core(pre, hs, mixed)

    def _attention_core(self, pre: str, hs: Tensor, mixed: dict[str, Tensor]) -> Tensor:
        """sign(q)·sign(k)ᵀ, softmax, mask decomposition of Â, Â·sign(v), context norm and RPReLU."""
        bq, length, c = hs.shape
        heads = self.p[self._attn_param(pre, "alpha")].numel() if self.config["attn_quant"] == "lsq" else None
        heads = heads or self._heads(pre)
        d = c // heads
        per_head = {
            n: (mixed[n] + self.p[f"{pre}.move_{n}2"])
            .view(bq, length, heads, d)
            .transpose(1, 2)
            .reshape(bq * heads, length, d)
            for n in ("q", "k", "v")
        }  # (G, L, d)
        qb, kb = K.pack_rows(_np(per_head["q"])), K.pack_rows(_np(per_head["k"]))
        root = math.sqrt(d)
        exact = root == 2.0 ** round(math.log2(root))  # 1/sqrt(d) exact: fold into the kernel
        scores = torch.from_numpy(K.bgemm(qb, K.to_panels(kb), length, d, scale=1.0 / root if exact else 1.0))
        if not exact:
            scores = scores / root
        attn = scores.view(bq, heads, length, length).softmax(dim=-1)
        masks, weights = self._attn_masks(pre, attn)  # (G, 3, L, LW) packed, (G, 3)
        vp = K.pack_cols_panels(_np(per_head["v"]))
        ctx = K.masked_av(masks, vp, weights, length, d)
        ctx = torch.from_numpy(ctx).view(bq, heads, length, d).transpose(1, 2).reshape(bq, length, c)
        out = self.norm(f"{pre}.norm_ctx")(ctx) + mixed["q"] + mixed["k"] + mixed["v"]
        return self.act(f"{pre}.act_ctx")(out)

    def _heads(self, pre: str) -> int:
        """Heads of the attention ``stages.<i>.blocks.<j>.attn`` (config ``num_heads`` of stages 3-4)."""
        return int(self.config["num_heads"][int(pre.split(".")[1]) - 2])

    def _attn_param(self, pre: str, name: str) -> str:
        return f"{pre}.attn_quant.{name}"

    def _attn_masks(self, pre: str, attn: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Packed binary masks (G, R, L, LW) and weights (G, R) with Â = Σ_r w_r T_r, G = B'·heads."""
        bq, heads, length, _ = attn.shape
        if self.config["attn_quant"] == "lsq":
            a, z = self._lsq_step(pre, attn)
            a, z = np.tile(a, bq), np.tile(z, bq)  # per g = b'·heads + h
            masks = K.lsq_masks(_np(attn).reshape(bq * heads, length, length), a, z)
            return masks, np.ascontiguousarray(np.repeat(a[:, None], 3, axis=1))
        masks, weights = self._gsb_masks(pre, attn)
        return K.pack_nonzero(masks.reshape(bq * heads, 3, length, length)), weights.reshape(bq * heads, 3)

    def _lsq_step(self, pre: str, attn: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Per-head step α_h and offset z_h of the LSQ levels l = clamp(round(3A/α_h + z_h), 0, 3).

        Formed with the float operations of the model's LSQ gradient scaling (``x − x·g + x·g`` with
        ``g = heads/√(3·numel)``), whose forward value can differ from the parameter by one rounding;
        the levels then match the float model's exactly.
        """
        alpha, zero = self.p[self._attn_param(pre, "alpha")], self.p[self._attn_param(pre, "zero_point")]
        g = alpha.numel() / math.sqrt(attn.numel() * 3)
        a = alpha - alpha * g + alpha * g
        z = zero - zero * g + zero * g
        return _np(a), _np(z)

    def _gsb_masks(self, pre: str, attn: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """GSB: Â = α(T0 + α2 T1 + α3 T2) = α(base + (α2 − 1)U + (α3 − α2)T2), U = T1 + T2 (SPEC §3.3).

        Returns uint8 masks (B', heads, 3, L, L) and weights (B', heads, 3)."""
        eps = 1e-5
        alpha = self.p[self._attn_param(pre, "alpha")].clamp(min=eps)
        a2 = self.p[self._attn_param(pre, "alpha2")].clamp(min=eps)
        a3 = self.p[self._attn_param(pre, "alpha3")].clamp(min=eps)
        q = attn / alpha
        rowmax = q.amax(dim=-1, keepdim=True)
        base = q.round().clamp(0.0, 1.0) > 0
        t2, u = q > 0.9 * rowmax, q > 0.7 * rowmax
        masks = torch.stack([base, u, t2], dim=2)
        w = torch.stack([alpha, alpha * (a2 - 1.0), alpha * (a3 - a2)]).reshape(1, 1, 3)
        return _np(masks.to(torch.uint8)), _np(w.expand(attn.shape[0], attn.shape[1], 3).float())

    def downsample(self, pre: str, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H/2, W/2, C2): binary (fused kernel) or fp (torch conv)."""
        t = self.norm(f"{pre}.norm_in")(x)
        b, h, w, c = t.shape
        pos = self.p[f"{pre}.pos_embed"]
        if f"{pre}.conv" not in self.ops:
            y = _nhwc(F.conv2d(_nchw(t), self.p[f"{pre}.conv.weight"], self.p.get(f"{pre}.conv.bias"), stride=2))
            y = self.norm(f"{pre}.norm")(y)
            return y + pos.view(1, y.shape[1], y.shape[2], -1)
        op = self.ops[f"{pre}.conv"]
        cout = op.meta["out"]
        r = _nhwc(F.avg_pool2d(_nchw(t), 2))  # (B, H/2, W/2, C)
        xb = K.pack_rows(_np(t).reshape(b * h * w, c), _np(self.p[f"{pre}.move"])).reshape(b, h, w, -1)
        act = self.act(f"{pre}.act")
        geo = {"groups": op.meta["groups"], "kernel": (2, 2), "stride": 2, "pad": 0, "dil": 1}
        if op.fused:
            with self._timed("conv.downsample"):
                y = K.bconv(
                    xb,
                    c,
                    op.panels,
                    op.wpop,
                    cout,
                    scale=op.scale,
                    bias=op.bias,
                    residual=_np(r).reshape(-1, c),
                    rprelu=act.arrays(),
                    **geo,
                )
            y = torch.from_numpy(y).view(b, h // 2, w // 2, cout)
        else:
            y = torch.from_numpy(K.bconv(xb, c, op.panels, op.wpop, cout, scale=op.scale, **geo))
            y = act(op.norm(y.view(b, h // 2, w // 2, cout)) + self._tile(r, cout))
        return y + pos.view(1, h // 2, w // 2, cout)

    def stem(self, images: Tensor) -> Tensor:
        p = self.p
        x = _nhwc(F.conv2d(images, p["stem.proj.weight"], p["stem.proj.bias"], stride=4))
        return F.gelu(self.norm("stem.norm")(x)) + _nhwc(p["stem.pos_embed"])

    # ---- model --------------------------------------------------------------------------------
    def forward_features(self, images: Tensor) -> Tensor:
        """Images (B, in, H, W) -> final normalised tokens (B, N, C)."""
        x = self.stem(images.float())
        for i, depth in enumerate(self.config["depths"]):
            if i:
                x = self.downsample(f"stages.{i}.downsample", x)
            block = self.conv_block if i < 2 else self.attention_block
            for j in range(depth):
                x = block(f"stages.{i}.blocks.{j}", x)
        return self.norm("norm")(x.flatten(1, 2))

    def check_input(self, images: Any) -> None:
        """Raises a ValueError naming the problem unless images is a float tensor (B, in_chans, H, W) of
        the model's image size with B >= 1 (the float model's own check, worded the same)."""
        want = (int(self.config["in_chans"]), *(int(s) for s in self.config["img_size"]))
        if not isinstance(images, Tensor):
            raise ValueError(
                f"expected images as a torch.Tensor of shape (B, {want[0]}, {want[1]}, {want[2]}), "
                f"got {type(images).__name__}"
            )
        if images.dim() != 4 or tuple(images.shape[1:]) != want or images.shape[0] < 1:
            raise ValueError(
                f"expected images of shape (B, {want[0]}, {want[1]}, {want[2]}) with B >= 1, got "
                f"{tuple(images.shape)}; resize the input to {want[1]}×{want[2]} (this packed model's img_size)"
            )
        if not images.dtype.is_floating_point or images.is_complex():
            raise ValueError(f"expected floating-point images, got dtype {images.dtype}; convert with .float()")
        if images.device.type != "cpu":
            raise ValueError(f"the packed engine runs on the CPU; got images on {images.device}, use .cpu()")

    def forward(self, images: Tensor) -> Tensor:
        """Images (B, in, H, W) -> logits (B, classes); (B, width) tokens when num_classes is 0."""
        self.check_input(images)
        threads = self.float_threads or (1 if images.shape[0] <= SMALL_BATCH else torch.get_num_threads())
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode(), self._timed("total"):
                tokens = self.forward_features(images).mean(dim=1)
                if self.config["num_classes"] == 0:
                    return tokens
                return F.linear(tokens, self.p["head.weight"], self.p["head.bias"])
        finally:
            torch.set_num_threads(previous)

    __call__ = forward


# ---- parameter-free token maths (same float operations as the model) -------------------------------
def _window_split(x: Tensor, w: int) -> Tensor:
    b, h, wd, c = x.shape
    return x.reshape(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)


def _window_merge(windows: Tensor, w: int, b: int, h: int, wd: int) -> Tensor:
    c = windows.shape[-1]
    return windows.reshape(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, wd, c)
