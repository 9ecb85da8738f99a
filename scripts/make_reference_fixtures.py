"""Build the small test fixtures of the authors' reference outputs from ``../shared/reference``.

    .venv/bin/python scripts/make_reference_fixtures.py [--src ../shared/reference] [--out tests/fixtures]

The reference packs (see their README) hold, per precision (fp, somefp, binary), the authors' mini
model (depths 1, 1, 1, 1) as float16 values, an input and what their code computed from it: eval and
train logits, intermediate maps, the loss, gradients and buffers after the training step. The tests
need all of it but not all of its bytes:

* the three packs share the same random weights, so weights equal in all three are stored once
  (``common.state.*``) and the rest per pack (``<pack>.state.*``), as float16 (lossless: the packs
  were rounded to float16);
* the input (2, 3, 224, 224), the same in all three packs, is stored once as float32 (``input``, 1.2 MB):
  it is ``torch.randn`` after ``manual_seed(1)``, but torch's normal sampler gives other values without
  AVX2 (its scalar and ARM kernels round differently), so the tests do not regenerate it;
* intermediate maps keep image 0 on a 7×7 grid of positions (every ``H/7``-th row and column), and
  the input gradient every 4th row and column; the JSON sidecar records each subset so the tests
  take the same one of their own tensors;
* everything else (logits, loss, target, parameter gradients, buffers after training) is copied
  unchanged.

Before writing, every stored tensor is checked against its source (bit for bit). Outputs:
``upstream-mini.safetensors``, ``upstream-mini.json`` and ``upstream-keys.json.gz`` (the state-dict
layouts of the released tiny and small models).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bhvit.checkpoint import atomic_write

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures"
PACKS = ("fp", "somefp", "binary")
GRID = 7  # positions kept per side of an intermediate map
GRAD_INPUT_STRIDE = 4


def take_subset(t: torch.Tensor, image: int | None, stride: int) -> torch.Tensor:
    """``t[image:image+1]`` (all images if None), then every ``stride``-th row and column of a
    (B, C, H, W) map; (B, N, C) tokens keep every token."""
    if image is not None:
        t = t[image : image + 1]
    return t[..., ::stride, ::stride] if t.dim() == 4 else t


def subsets(pack: dict[str, torch.Tensor]) -> dict[str, tuple[int | None, int]]:
    """Which part of each large tensor the fixtures keep: ``key -> (image, stride)``."""
    out: dict[str, tuple[int | None, int]] = {"grad.input": (None, GRAD_INPUT_STRIDE)}
    for key, t in pack.items():
        if key.startswith("hidden."):
            out[key] = (0, max(1, t.shape[-1] // GRID) if t.dim() == 4 else 1)
    return out


def build(src: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The fixture tensors and the JSON sidecar from the three reference packs in ``src``."""
    packs = {p: load_file(str(src / f"upstream-mini-{p}.safetensors")) for p in PACKS}
    x = packs["fp"]["input"]
    for p, t in packs.items():
        if not torch.equal(t["input"], x):
            raise SystemExit(f"{p}: its input differs from the fp pack's; the tests store one input")
    state_keys = set.intersection(*({k for k in t if k.startswith("state.")} for t in packs.values()))
    common = {
        k
        for k in state_keys
        if all(torch.equal(packs["fp"][k], t[k]) and packs["fp"][k].dtype == t[k].dtype for t in packs.values())
    }
    tensors = {"input": x, **{f"common.{k}": packs["fp"][k] for k in sorted(common)}}
    meta: dict[str, Any] = {"packs": {}}
    for p, t in packs.items():
        cut = subsets(t)
        for key, value in t.items():
            if key in common or key == "input" or key.startswith("gradstat."):
                continue  # gradstat: summaries of large gradients the tests do not read
            tensors[f"{p}.{key}"] = take_subset(value, *cut[key]) if key in cut else value
        sidecar = json.loads((src / f"upstream-mini-{p}.json").read_text())
        meta["packs"][p] = {
            "flags": sidecar["flags"],
            "config": {k: sidecar["config"][k] for k in ("depths", "hidden_size")},
            "subsets": {k: list(v) for k, v in cut.items()},
            "source_sha256": sidecar.get("sha256"),
        }
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    check(packs, tensors, meta)
    return tensors, meta


def pack_from_fixture(tensors: dict[str, torch.Tensor], pack: str) -> dict[str, torch.Tensor]:
    """One pack's tensors, keys as in the reference pack (large tensors as their stored subset)."""
    out = {k.removeprefix("common."): v for k, v in tensors.items() if k.startswith("common.")}
    out.update({k.removeprefix(f"{pack}."): v for k, v in tensors.items() if k.startswith(f"{pack}.")})
    return out


def load_pack(pack: str, directory: Path = OUT) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A pack as the tests read it: its tensors (the shared input included) and its sidecar entry
    (flags, config, subsets)."""
    meta = json.loads((directory / "upstream-mini.json").read_text())
    stored = load_file(str(directory / "upstream-mini.safetensors"))
    tensors = {**pack_from_fixture(stored, pack), "input": stored["input"]}
    return tensors, meta["packs"][pack]


def check(packs: dict[str, dict[str, torch.Tensor]], tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Every tensor a pack's tests read comes back from the fixture bit for bit (or as its subset)."""
    for p, t in packs.items():
        got = pack_from_fixture(tensors, p)
        cut = meta["packs"][p]["subsets"]
        for key, value in t.items():
            if key == "input" or key.startswith("gradstat."):
                continue
            want = take_subset(value, *cut[key]) if key in cut else value
            if key not in got or got[key].dtype != want.dtype or not torch.equal(got[key], want):
                raise SystemExit(f"{p}: {key} does not round-trip through the fixture")


def layouts(src: Path) -> dict[str, list]:
    """The state-dict layouts ``[name, shape, dtype]`` of the released models, by ``<arch>-<pack>``."""
    return {
        f"{a}-{p}": json.loads((src / f"upstream-keys-{a}-{p}.json").read_text())
        for a in ("tiny", "small")
        for p in PACKS
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "reference")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if not (args.src / "upstream-mini-fp.safetensors").is_file():
        print(f"error: no reference packs in {args.src}; pass --src DIR", file=sys.stderr)
        return 2
    tensors, meta = build(args.src)
    out = args.out
    atomic_write(out / "upstream-mini.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    atomic_write(out / "upstream-mini.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1) + "\n"))
    keys = json.dumps(layouts(args.src), separators=(",", ":")).encode()
    atomic_write(out / "upstream-keys.json.gz", lambda tmp: Path(tmp).write_bytes(gzip.compress(keys, mtime=0)))
    for name in ("upstream-mini.safetensors", "upstream-mini.json", "upstream-keys.json.gz"):
        print(f"{out / name}: {(out / name).stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
