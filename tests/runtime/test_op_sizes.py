"""Every op of the runtime against the numpy oracle (bhvit/runtime/reference.py) on awkward sizes, on every kernel
path this CPU offers (``bhvit.runtime.set_isa``) and on 1 and 2 threads: bit for bit where the spec fixes the
float operations (sign packing, the binary layers' dots and output transform, ``pack``'s bits and means,
``avg_pool``, ``affine`` without GELU, ``shift_add``), to float rounding elsewhere (attention, GELU, GEMM sums),
and then the same bits on every path.

Each case is a small program around the op under test. Its input comes from the images by ``patch_conv`` ops
whose weights select image values (one-hot rows: exact copies, so runtime and oracle start from the same
floats); a map is read out by a ``patch_conv`` whose kernel covers it and whose weight is a permutation (output
``(c·s + y)·s + x`` is exactly ``map[y, x, c]``); bits are read out by a ``blinear`` with an invertible ±1 weight
(equal integer dots mean equal bits). Rows are pixels times batch: a (1, 1, K) map of a batch of 67 images is a
67-row GEMM.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import bhvit.runtime as rt
from bhvit.engine.program import Program, write_program
from bhvit.runtime import ops, reference

pytestmark = pytest.mark.skipif(not rt.available(), reason="libbhvit_runtime is not built (pip install -e .)")

MAX_IMAGE_CHANNELS = 64  # the program's input (§7)
ROWS = (1, 67)  # images per run: one row, and more than a 64-row task with a tail
REL_TOL = 1e-5  # where the spec leaves the order of a sum (or exp, erf) to the implementation


class Builder:
    """A program under construction: ops (each checked against the op table) and tensors."""

    def __init__(self, image: tuple[int, int, int], seed: int) -> None:
        """``image``: (C, H, W) of the program's input."""
        self.rng = np.random.default_rng(seed)
        self.input = image
        self.ops: list[dict] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.selected = 0  # image values handed out by select()

    def tensor(self, name: str, value: np.ndarray) -> str:
        self.tensors[name] = value
        return name

    def floats(self, name: str, *shape: int, low: float = -1.0, high: float = 1.0) -> str:
        return self.tensor(name, self.rng.uniform(low, high, shape).astype(np.float32))

    def rprelu(self, name: str, n: int) -> dict[str, str]:
        """An ``rprelu`` object of n channels with random slope, b1 and b2."""
        return {key: self.floats(f"{name}.{key}", n) for key in ("slope", "b1", "b2")}

    def transform(self, n: int, steps: set[str], residual: str | None = None, tag: str = "") -> dict[str, object]:
        """The output transform's fields (§4) for n channels: ``scale`` and the optional ``steps`` among bias,
        residual (the register ``residual``), rprelu and post."""
        post = {"scale": self.floats(f"{tag}ps", n), "bias": self.floats(f"{tag}pb", n)} if "post" in steps else None
        return {
            "scale": self.floats(f"{tag}scale", n, low=0.01),
            "bias": self.floats(f"{tag}bias", n) if "bias" in steps else None,
            "residual": residual if "residual" in steps else None,
            "rprelu": self.rprelu(f"{tag}act", n) if "rprelu" in steps else None,
            "post": post,
        }

    def bits(self, name: str, rows: int, k: int) -> str:
        return self.tensor(name, reference.pack(self.rng.random((rows, k)) < 0.5))

    def op(self, kind: ops.OpKind, **fields: object) -> None:
        op = {"op": kind.name, **{k: v for k, v in fields.items() if v is not None}}
        ops.check(op)
        self.ops.append(op)

    def select(self, out: str, channels: int, kernel: int) -> None:
        """``out`` (H/kernel, W/kernel, channels): copies of image values, the next ``channels`` of the
        C·kernel² values of each kernel × kernel patch (cycling)."""
        c = self.input[0]
        patch = c * kernel * kernel
        weight = np.zeros((channels, patch), np.float32)
        weight[np.arange(channels), (self.selected + np.arange(channels)) % patch] = 1.0
        self.selected += channels
        name = self.tensor(f"select_{out}", weight.reshape(channels, c, kernel, kernel))
        self.op(ops.PATCH_CONV, **{"in": "input", "out": out, "kernel": kernel, "weight": name})

    def readout(self, reg: str, side: int, channels: int) -> str:
        """A (1, 1, channels·side²) register holding the float map ``reg`` (side, side, channels) exactly: each
        step a ``patch_conv`` (kernel <= 16) with a permutation weight."""
        kernel = next(k for k in range(min(side, 16), 0, -1) if side % k == 0)
        eye = np.eye(channels * kernel * kernel, dtype=np.float32).reshape(-1, channels, kernel, kernel)
        out = f"{reg}_read"
        self.op(ops.PATCH_CONV, **{"in": reg, "out": out, "kernel": kernel, "weight": self.tensor(f"eye_{reg}", eye)})
        return out if kernel == side else self.readout(out, side // kernel, channels * kernel * kernel)

    def bits_readout(self, reg: str, n: int) -> str:
        """A (1, 1, n) register whose integers determine the bits of ``reg`` (1, 1, n): their product with an
        invertible ±1 matrix."""
        signs = self.rng.random((n, n)) < 0.5
        while np.linalg.matrix_rank(1.0 - 2.0 * signs) < n:
            signs = self.rng.random((n, n)) < 0.5
        self.tensor("probe", reference.pack(signs))
        self.op(
            ops.BLINEAR,
            **{"in": reg, "out": "probed", "in_features": n, "out_features": n, "weight": "probe"},
            scale=self.tensor("probe_scale", np.ones(n, np.float32)),
        )
        return "probed"

    def write(self, path: Path, output: str, width: int) -> Path:
        program = {"input": list(self.input), "output": output, "num_classes": width, "ops": self.ops}
        c = self.input[0]
        prep = {"mean": [0.0] * c, "std": [1.0] * c, "resize": min(self.input[1:])}
        return write_program(Program(program, self.tensors, {"preprocess": json.dumps(prep)}), path)

    def images(self, batch: int) -> np.ndarray:
        """Images with exact zeros, negative zeros and small multiples of 1/4 (which meet ``move`` values of
        the same grid in exact sums of 0: packed as +1), and ordinary values."""
        x = self.rng.standard_normal((batch, *self.input)).astype(np.float32)
        grid = self.rng.random(x.shape) < 0.3
        x[grid] = self.rng.integers(-4, 5, int(grid.sum())).astype(np.float32) / 4
        x[self.rng.random(x.shape) < 0.05] = -0.0
        return x


def grid_floats(b: Builder, name: str, n: int) -> str:
    """Values on the images' 1/4 grid, so that ``x + move`` is exactly 0 for some inputs."""
    return b.tensor(name, b.rng.integers(-4, 5, n).astype(np.float32) / 4)


def check(path: Path, images: list[np.ndarray], exact: bool = True) -> None:
    """The runtime's logits equal the oracle's (bit for bit, or to REL_TOL of the largest) on every kernel path
    and on 1 and 2 threads, and the same bits everywhere."""
    model = rt.load(path)
    previous = rt.isa(), rt.get_num_threads()
    try:
        for x in images:
            want, first = reference.run(path, x), None
            for isa in rt.available_isas():
                rt.set_isa(isa)
                for threads in (1, 2):
                    rt.set_num_threads(threads)
                    got = model.run(x)
                    if exact:
                        np.testing.assert_array_equal(got, want, err_msg=f"{isa}, {threads} threads")
                    else:
                        scale = max(float(np.abs(want).max()), 1e-6)
                        assert np.abs(got - want).max() <= REL_TOL * scale, (isa, threads)
                    first = got if first is None else first
                    np.testing.assert_array_equal(got, first, err_msg=f"{isa}, {threads} threads")
    finally:
        rt.set_isa(previous[0])
        rt.set_num_threads(previous[1])


def input_side(k: int) -> tuple[int, int]:
    """(image channels, patch side) whose patches hold at least k values."""
    c = min(k, MAX_IMAGE_CHANNELS)
    side = 1
    while c * side * side < k:
        side += 1
    return c, side


# ---- blinear: K, N and rows around the word, panel, task and nibble-table boundaries ----------------------
TRANSFORMS = {  # which optional steps of the output transform a case uses
    "plain": set(),
    "bias rprelu": {"bias", "rprelu"},
    "residual post": {"residual", "post"},
    "all, accumulated": {"bias", "residual", "rprelu", "post", "accumulate"},
}
K_SIZES = [1, 63, 64, 65, 127, 129, 256, 257, 512, 1000]
N_SIZES = [1, 9, 65, 130]


def blinear_case(tmp_path: Path, k: int, n: int, steps: set[str], seed: int) -> tuple[Path, Builder]:
    c, side = input_side(max(k, n))
    b = Builder((c, side, side), seed)
    b.select("x", k, side)
    # the residual: n channels, or (accumulated case) fewer, tiled along the output channels
    res_width = n if "accumulate" not in steps else next(w for w in (8, 5, 3, 1) if n % w == 0)
    if "residual" in steps:
        b.select("r", res_width, side)
    b.op(ops.SIGN_PACK, **{"in": "x", "out": "xb"}, move=grid_floats(b, "move", k))
    transform = b.transform(n, steps, residual="r")
    layer = {"in": "xb", "out": "y", "in_features": k, "out_features": n, "weight": b.bits("w", n, k)}
    b.op(ops.BLINEAR, **layer, **transform)
    if "accumulate" in steps:  # a second layer added into y
        b.op(ops.BLINEAR, **{**layer, "weight": b.bits("w2", n, k)}, **transform, accumulate=True)
    return b.write(tmp_path / "blinear.bhvp", "y", n), b


@pytest.mark.parametrize("n", N_SIZES)
@pytest.mark.parametrize("k", K_SIZES)
def test_blinear_sizes(tmp_path: Path, k: int, n: int) -> None:
    """Every K around 64-bit words (1, 63, 64, 65, 127, 129, 256, 257, 512+), N within and across 8-row panels
    and nibble quads, 1 and 67 rows; the output transform's steps in turn."""
    steps = list(TRANSFORMS.values())[(K_SIZES.index(k) + N_SIZES.index(n)) % len(TRANSFORMS)]
    path, b = blinear_case(tmp_path, k, n, steps, seed=k * 1000 + n)
    check(path, [b.images(rows) for rows in ROWS])


@pytest.mark.parametrize("steps", list(TRANSFORMS))
@pytest.mark.parametrize(
    "k,n",
    [(64, 64), (129, 96), (256, 200), (64, 1100), (256, 1030), (1, 1040), (1100, 96), (2048, 70), (2049, 64)],
)
def test_blinear_nibble_tables(tmp_path: Path, k: int, n: int, steps: str) -> None:
    """K <= 2048 and N >= 64: the AVX2 path's nibble-table kernels (up to 1024 columns per task, so N past that
    and a partial last quad too; K in blocks of 16 words, so 1100 = 16 + 2 words and 2048 = 16 + 16; 2049 is past
    the nibble layout), every output-transform step, against the oracle and the other paths."""
    path, b = blinear_case(tmp_path, k, n, TRANSFORMS[steps], seed=k + n)
    check(path, [b.images(rows) for rows in (3, 67)])


@pytest.mark.parametrize("mean_r", [1, 2, 4, 8, 3, 5, 6])  # 1-8 divide 128 (packed in the transform); 3, 5, 6 not
@pytest.mark.parametrize("k", [64, 129, 512])
def test_blinear_packed_mode(tmp_path: Path, k: int, mean_r: int) -> None:
    """``pack`` (the MLP's fc1): the bits of ``z + move`` (read out through an invertible ±1 layer) and the group
    means of z, for mean_r dividing 128 and not."""
    n = 24 * mean_r if mean_r < 8 else 16 * mean_r
    for read in ("means", "bits"):
        c, side = input_side(max(k, n))
        b = Builder((c, side, side), seed=k + mean_r)
        b.select("x", k, side)
        b.select("r", n // mean_r, side)
        b.op(ops.SIGN_PACK, **{"in": "x", "out": "xb"})
        b.op(
            ops.BLINEAR,
            **{"in": "xb", "in_features": k, "out_features": n, "weight": b.bits("w", n, k)},
            **b.transform(n, {"bias", "residual", "rprelu"}, residual="r"),
            pack={"out": "hb", "move": grid_floats(b, "move", n), "mean_r": mean_r, "means": "h"},
        )
        output, width = ("h", n // mean_r) if read == "means" else (b.bits_readout("hb", n), n)
        check(b.write(tmp_path / f"{read}.bhvp", output, width), [b.images(rows) for rows in ROWS])


# ---- bconv: group widths, strides, dilations, paddings, non-square inputs -----------------------------------
CONVS = {  # (H, W, Cin, Cout, groups, [kh, kw], stride, padding, dilation): square outputs, for the readout
    "msgdc 3x3 d1": (6, 6, 32, 16, 4, [3, 3], 1, 1, 1),  # group width 8
    "msgdc 3x3 d3": (5, 5, 64, 16, 4, [3, 3], 1, 3, 3),  # 16
    "msgdc 3x3 d5": (7, 7, 96, 16, 4, [3, 3], 1, 5, 5),  # 24
    "width 32": (4, 4, 128, 8, 4, [3, 3], 1, 1, 1),
    "width 40": (5, 5, 160, 8, 4, [3, 3], 1, 2, 2),
    "width 64": (3, 3, 256, 8, 4, [3, 3], 1, 1, 1),
    "unaligned 80": (4, 4, 80, 20, 1, [2, 2], 2, 1, 2),
    "downsample 3": (4, 4, 3, 6, 1, [2, 2], 2, 0, 1),
    "downsample 65": (6, 6, 65, 130, 1, [2, 2], 2, 0, 1),
    "downsample 128": (2, 2, 128, 256, 1, [2, 2], 2, 0, 1),
    "non-square input 1x3": (5, 7, 16, 8, 2, [1, 3], 1, 0, 1),
    "non-square input 3x5 strided": (9, 11, 24, 12, 3, [3, 5], 2, 1, 1),
    "4x4 kernel padded": (3, 3, 8, 8, 1, [4, 4], 1, 2, 1),
    "1x1": (1, 1, 64, 64, 1, [1, 1], 1, 0, 1),
}


@pytest.mark.parametrize("case", list(CONVS))
def test_bconv_geometry(tmp_path: Path, case: str) -> None:
    """Binary grouped convolutions (taps in the zero padding count 0) followed by a second one accumulating into
    the same map, with the whole output transform and a residual tiled along the channels."""
    h, w, cin, cout, groups, kernel, stride, pad, dil = CONVS[case]
    oh = (h + 2 * pad - dil * (kernel[0] - 1) - 1) // stride + 1
    assert oh == (w + 2 * pad - dil * (kernel[1] - 1) - 1) // stride + 1  # square: one readout
    c, side = input_side(cin)
    b = Builder((c, h * side, w * side), seed=cin + cout)
    b.select("x", cin, side)
    b.op(ops.SIGN_PACK, **{"in": "x", "out": "xb"}, move=grid_floats(b, "move", cin))
    taps = kernel[0] * kernel[1]
    geometry = {"in_channels": cin, "out_channels": cout, "kernel": kernel, "stride": stride}
    geometry |= {"padding": pad, "dilation": dil, "groups": groups}
    for i, accumulate in enumerate((False, True)):
        b.op(
            ops.BCONV,
            **{"in": "xb", "out": "y", "weight": b.bits(f"w{i}", cout, taps * cin // groups), **geometry},
            **b.transform(cout, {"rprelu", "post" if accumulate else "bias"}, tag=str(i)),
            accumulate=accumulate,
        )
    check(b.write(tmp_path / "bconv.bhvp", b.readout("y", oh, cout), cout * oh * oh), [b.images(2), b.images(3)])


def test_binary_downsample_with_pooled_residual(tmp_path: Path) -> None:
    """The model's binary downsampling: ``avg_pool`` of t tiled twice along the channels as the residual of a
    2x2 stride-2 ``bconv`` of sign(t + move), then RPReLU, and an ``affine`` adding a position map."""
    h, cin, cout = 6, 24, 48
    b = Builder((cin, h, h), seed=5)
    b.select("t", cin, 1)
    b.op(ops.AVG_POOL, **{"in": "t", "out": "r", "kernel": 2})
    b.op(ops.SIGN_PACK, **{"in": "t", "out": "tb"}, move=grid_floats(b, "move", cin))
    b.op(
        ops.BCONV,
        **{"in": "tb", "out": "y", "in_channels": cin, "out_channels": cout, "kernel": [2, 2], "stride": 2},
        **{"padding": 0, "dilation": 1, "groups": 1, "weight": b.bits("w", cout, 4 * cin)},
        **b.transform(cout, {"bias", "residual", "rprelu"}, residual="r"),
    )
    b.op(ops.AFFINE, **{"in": "y", "out": "z"}, scale=b.floats("as", cout), add=b.floats("pos", h // 2, h // 2, cout))
    check(b.write(tmp_path / "down.bhvp", b.readout("z", h // 2, cout), cout * (h // 2) ** 2), [b.images(3)])


# ---- float ops ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernels", [[3], [5], [3, 5]])
@pytest.mark.parametrize("side,channels", [(1, 4), (2, 12), (3, 8), (5, 12), (7, 36)])
def test_shift_add(tmp_path: Path, kernels: list[int], side: int, channels: int) -> None:
    """The MLP's shift branches (circular, summed in the spec's order) added into a map, on maps down to 1x1."""
    b = Builder((channels, side, side), seed=side * 100 + channels)
    b.select("x", channels, 1)
    b.select("acc", channels, 1)
    scales = b.floats("scales", 3 * len(kernels), 2, channels)
    b.op(ops.SHIFT_ADD, **{"in": "x", "out": "acc", "kernels": kernels, "scales": scales})
    check(b.write(tmp_path / "shift.bhvp", b.readout("acc", side, channels), channels * side * side), [b.images(2)])


@pytest.mark.parametrize("act", ["none", "gelu"])
def test_float_ops(tmp_path: Path, act: str) -> None:
    """``patch_conv`` with random weights (a stem), ``affine`` (bit for bit without GELU), ``mean_tokens``,
    ``linear``: the GEMM-like sums and erf within float rounding."""
    for head in (False, True):
        b = Builder((3, 8, 8), seed=1)
        b.op(ops.PATCH_CONV, **{"in": "input", "out": "x", "kernel": 4, "weight": b.floats("stem", 20, 3, 4, 4)})
        b.op(ops.AFFINE, **{"in": "x", "out": "x"}, scale=b.floats("sc", 20), bias=b.floats("bi", 20), act=act)
        if head:
            b.op(ops.MEAN_TOKENS, **{"in": "x", "out": "p"})
            b.op(ops.LINEAR, **{"in": "p", "out": "y", "weight": b.floats("fc", 7, 20), "bias": b.floats("fb", 7)})
            path = b.write(tmp_path / "head.bhvp", "y", 7)
        else:
            path = b.write(tmp_path / "stem.bhvp", b.readout("x", 2, 20), 80)
        check(path, [b.images(3)], exact=False)


def test_affine_is_exact(tmp_path: Path) -> None:
    """``affine`` without GELU on copied values: ``x·scale + bias + add``, the same floats as the oracle's."""
    b = Builder((12, 3, 3), seed=2)
    b.select("x", 12, 1)
    b.op(ops.AFFINE, **{"in": "x", "out": "y"}, scale=b.floats("s", 12), bias=b.floats("b", 12))
    b.op(ops.AFFINE, **{"in": "y", "out": "y"}, add=b.floats("add", 3, 3, 12), act="none")
    check(b.write(tmp_path / "affine.bhvp", b.readout("y", 3, 12), 108), [b.images(rows) for rows in ROWS])


# ---- window attention: L = w² + nW tokens per window, not a multiple of 64 ------------------------------------
ATTENTION = {  # (side, window, pool padding, heads): L
    "L 20": (8, 4, 0, 1),
    "L 25 padded": (12, 4, 1, 2),
    "L 53 (w 7, as the model)": (14, 7, 3, 2),
    "L 68": (16, 8, 0, 1),
    "L 73": (24, 8, 3, 2),
    "L 148": (24, 12, 5, 1),
}


@pytest.mark.parametrize("quant", ["lsq", "gsb", "lsq without grad_scale"])
@pytest.mark.parametrize("case", list(ATTENTION))
def test_window_attention(tmp_path: Path, case: str, quant: str) -> None:
    """The attention op (global tokens, token LayerNorm, binary q/k/v, scores, softmax, LSQ or GSB masks, Â·v in
    64-row query blocks, context transform, merge) against the oracle to float rounding, the same bits on every
    path."""
    side, window, pad, heads = ATTENTION[case]
    c = 4 * heads
    b = Builder((c, side, side), seed=side + window)
    b.select("x", c, 1)
    branches = {
        n: {
            "move": b.floats(f"{n}.move", c),
            "weight": b.bits(f"{n}.w", c, c),
            "scale": b.floats(f"{n}.scale", c, low=0.1),
            "bias": b.floats(f"{n}.bias", c),
            "rprelu": b.rprelu(f"{n}.act", c),
            "move2": b.floats(f"{n}.move2", c),
        }
        for n in "qkv"
    }
    if quant.startswith("lsq"):
        q = {"kind": "lsq", "step": b.floats("step", heads, low=0.2, high=0.6)}
        q |= {"zero": b.floats("zero", heads, low=-0.2, high=0.6), "grad_scale": quant == "lsq"}
    else:
        weights = b.tensor("gsb.w", np.array([0.02, 0.013, 0.021], np.float32))
        q = {"kind": "gsb", "alpha": b.tensor("gsb.a", np.array([0.01], np.float32)), "weights": weights}
        q |= {"thresholds": [0.5, 0.7, 0.9]}
    b.op(
        ops.WINDOW_ATTENTION,
        **{"in": "x", "out": "o", "window": window, "heads": heads, "pool_padding": pad},
        pool_alpha=b.floats("pool", c, low=0.0),
        token_norm={"weight": b.floats("ln.w", c), "bias": b.floats("ln.b", c), "eps": 1e-5},
        **branches,
        score_divisor=float(np.sqrt(c // heads)),
        quant=q,
        ctx={"scale": b.floats("ctx.s", c), "bias": b.floats("ctx.b", c), "rprelu": branches["q"]["rprelu"]},
        mix=b.floats("mix", c, low=0.0),
    )
    check(b.write(tmp_path / "attn.bhvp", b.readout("o", side, c), c * side * side), [b.images(2)], exact=False)
