"""The authors' checkpoints: safe loading, a declarative key map, and config inference.

``load_upstream(source)`` takes a file written by the authors' training script (a dict with
``model`` and usually ``args``, ``optimizer``, ``lr_scheduler``, ``epoch``, ``scaler``) or a bare state
dict, infers the architecture from the keys and shapes, converts the keys to ours with
:data:`BLOCK_RULES` / :data:`GLOBAL_RULES` and returns our model in eval mode.

Files are read with ``torch.load(weights_only=True)``; the only class allowed beyond tensors and
containers is ``argparse.Namespace`` (the authors' ``args``). A file whose unpickling would need
anything else is refused before any of its code can run.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .files import file_kind, packed_file_message
from .models.bhvit import BHViT, BHViTConfig

__all__ = [
    "safe_torch_load",
    "load_upstream",
    "convert_upstream_state_dict",
    "infer_upstream_config",
    "upstream_state_dict",
    "CheckpointError",
]

SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


# ---------------------------------------------------------------------------------------------
# Safe loading
# ---------------------------------------------------------------------------------------------
def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` allowing only ``argparse.Namespace`` beyond tensors.

    The one loader of every torch file bhvit reads (models, training checkpoints, teachers). Raises
    :class:`CheckpointError` for a missing file, a file that is not a torch checkpoint, or one whose
    unpickling would construct other objects (which could run code); the message never suggests
    loading it unsafely.
    """
    path = Path(path)
    kind = file_kind(path)
    if kind == "missing":
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if kind == "packed":
        raise CheckpointError(packed_file_message(path))
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or others
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: ([\w.]+)", text)
        if found or "weights_only" in text:
            detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
            what = found.group(1) if found else detail.group(1).strip() if detail else "outside the allow-list"
            raise CheckpointError(
                f"refusing to load {str(path)!r}: it is not a bhvit or authors' checkpoint, or it contains "
                f"disallowed pickled objects ({what}); bhvit never unpickles code, it reads only tensors, "
                "containers and argparse.Namespace. Re-save the state dict alone "
                "(torch.save(ckpt['model'], path)) where the file is trusted"
            ) from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise CheckpointError(f"cannot read {str(path)!r}: not a torch checkpoint ({first})") from None


def _extract_state_dict(obj: Any) -> tuple[dict[str, Tensor], Any]:
    """``(state_dict, args)`` from a training checkpoint dict or a bare state dict."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a checkpoint dict or a state dict, got {type(obj).__name__}")
    args = obj.get("args")
    for key in ("model", "state_dict", "model_ema"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    sd = {k.removeprefix("module."): v for k, v in obj.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"state dict entry {bad[0]!r} is not a tensor; is this a BHViT checkpoint?")
    return sd, args


# ---------------------------------------------------------------------------------------------
# The key map: upstream name -> ours. ``flat`` marks vectors stored as (1, C, 1, 1) / (1, 1, C).
# ---------------------------------------------------------------------------------------------
BLOCK_RULES: list[tuple[str, str, bool]] = [
    # shared by both block kinds
    (r"layernorm_before\.(.+)", r"norm1.\1", False),
    (r"layernorm_after\.(.+)", r"norm2.\1", False),
    (r"intermediate\.move", r"mlp.move1", False),
    (r"intermediate\.dense\.(.+)", r"mlp.fc1.\1", False),
    (r"intermediate\.norm\.(.+)", r"mlp.norm1.\1", False),
    (r"intermediate\.rprelu\.(.+)", r"mlp.act1.\1", False),
    (r"output\.move", r"mlp.move2", False),
    (r"output\.dense\.(.+)", r"mlp.fc2.\1", False),
    (r"output\.norm\.(.+)", r"mlp.norm2.\1", False),
    (r"output\.rprelu\.(.+)", r"mlp.act2.\1", False),
    (r"output\.layerscale\.(.+)", r"mlp.ls.\1", False),
    (r"layerscale_([hw])([35])\.(.+)", r"shift.ls_\1\2.\3", False),
    (r"layerscale_ch([35])\.(.+)", r"shift.ls_c\1.\2", False),
    # MSGDC (stages 1-2)
    (r"GC\.move\.bias", r"mixer.move", True),
    (r"GC\.cov1\.(.+)", r"mixer.convs.0.\1", False),
    (r"GC\.cov2\.(.+)", r"mixer.convs.1.\1", False),
    (r"GC\.cov3\.(.+)", r"mixer.convs.2.\1", False),
    (r"GC\.act1\.(.+)", r"mixer.acts.0.\1", False),
    (r"GC\.act2\.(.+)", r"mixer.acts.1.\1", False),
    (r"GC\.act3\.(.+)", r"mixer.acts.2.\1", False),
    (r"GC\.norm\.(.+)", r"mixer.norm.\1", False),
    # MSMHA (stages 3-4)
    (r"attention\.attention\.token_FA\.a1", r"attn.pool.alpha", True),
    (r"attention\.attention\.token_FA\.norm\.(.+)", r"attn.token_norm.\1", False),
    (r"attention\.attention\.move([qkv])", r"attn.move_\1", False),
    (r"attention\.attention\.move([qkv])2", r"attn.move_\g<1>2", False),
    (r"attention\.attention\.query\.(.+)", r"attn.q.\1", False),
    (r"attention\.attention\.key\.(.+)", r"attn.k.\1", False),
    (r"attention\.attention\.value\.(.+)", r"attn.v.\1", False),
    (r"attention\.attention\.norm([qkv])\.(.+)", r"attn.norm_\1.\2", False),
    (r"attention\.attention\.rprelu([qkv])\.(.+)", r"attn.act_\1.\2", False),
    (r"attention\.attention\.att_prob_quantizer\.(alpha|zero_point|init_state)", r"attn.attn_quant.\1", False),
    (r"attention\.attention\.att_prob_clip", r"attn.attn_quant.alpha", False),
    (r"attention\.attention\.att_prob_clip2", r"attn.attn_quant.alpha2", False),
    (r"attention\.attention\.att_prob_clip3", r"attn.attn_quant.alpha3", False),
    (r"attention\.attention\.norm_context\.(.+)", r"attn.norm_ctx.\1", False),
    (r"attention\.attention\.rprelu_context\.(.+)", r"attn.act_ctx.\1", False),
    (r"attention\.attention\.parm", r"attn.mix", True),
    (r"attention\.output\.move", r"attn.move_o", False),
    (r"attention\.output\.dense\.(.+)", r"attn.proj.\1", False),
    (r"attention\.output\.norm\.(.+)", r"attn.norm_o.\1", False),
    (r"attention\.output\.rprelu\.(.+)", r"attn.act_o.\1", False),
    (r"attention\.output\.layerscale\.(.+)", r"attn.ls.\1", False),
]

DOWNSAMPLE_RULES: list[tuple[str, str, bool]] = [
    (r"norm0\.(.+)", r"norm_in.\1", False),
    (r"proj\.(.+)", r"conv.\1", False),
    (r"norm\.(.+)", r"norm.\1", False),
    (r"move", r"move", True),
    (r"rprelu\.(.+)", r"act.\1", False),
    (r"position_embeddings", r"pos_embed", False),
]

GLOBAL_RULES: list[tuple[str, str, bool]] = [
    (r"vit\.embeddings\.position_embeddings", r"stem.pos_embed", False),
    (r"vit\.embeddings\.patch_embeddings\.proj\.(.+)", r"stem.proj.\1", False),
    (r"vit\.embeddings\.patch_embeddings\.norm\.(.+)", r"stem.norm.\1", False),
    (r"vit\.layernorm\.(.+)", r"norm.\1", False),
    (r"classifier\.(.+)", r"head.\1", False),
]

_BLOCK_KEY = re.compile(r"vit\.encoder\.layer([AB])\.(\d+)\.(.+)")
_DOWN_KEY = re.compile(r"vit\.encoder\.patch_embed([123])\.(.+)")


def _apply_rules(rules: list[tuple[str, str, bool]], key: str) -> tuple[str, bool] | None:
    for pattern, template, flat in rules:
        m = re.fullmatch(pattern, key)
        if m:
            return m.expand(template), flat
    return None


def _block_position(kind: str, index: int, depths: tuple[int, ...]) -> tuple[int, int]:
    """(stage, block) of the authors' ``layerA.i`` / ``layerB.i`` (A: stages 1-2, B: stages 3-4)."""
    first = 0 if kind == "A" else 2
    for stage in (first, first + 1):
        if index < depths[stage]:
            return stage, index
        index -= depths[stage]
    raise CheckpointError(f"block layer{kind}.{index} does not fit depths {depths}")


def map_upstream_key(key: str, depths: tuple[int, ...]) -> tuple[str, bool]:
    """Our name for an upstream key and whether the value is a flattened vector; unmapped -> error."""
    m = _BLOCK_KEY.fullmatch(key)
    if m:
        stage, j = _block_position(m.group(1), int(m.group(2)), depths)
        hit = _apply_rules(BLOCK_RULES, m.group(3))
        if hit:
            return f"stages.{stage}.blocks.{j}.{hit[0]}", hit[1]
    m = _DOWN_KEY.fullmatch(key)
    if m:
        hit = _apply_rules(DOWNSAMPLE_RULES, m.group(2))
        if hit:
            return f"stages.{m.group(1)}.downsample.{hit[0]}", hit[1]
    hit = _apply_rules(GLOBAL_RULES, key)
    if hit:
        return hit
    raise CheckpointError(f"unexpected key {key!r}: it has no counterpart in bhvit's BHViT")


def convert_upstream_state_dict(sd: Mapping[str, Tensor], depths: tuple[int, ...]) -> dict[str, Tensor]:
    """Rename an upstream state dict to ours (values unchanged; vectors flattened)."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        name, flat = map_upstream_key(key, depths)
        out[name] = value.reshape(-1) if flat else value
    return out


# ---------------------------------------------------------------------------------------------
# Architecture inference
# ---------------------------------------------------------------------------------------------
def _need(sd: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in sd:
        raise CheckpointError(f"missing key {key!r}: this does not look like a BHViT checkpoint")
    return sd[key]


def _infer_depths(sd: Mapping[str, Tensor], widths: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Count blocks per stage: a block's stage is the one whose width matches its norm."""
    counts = [0, 0, 0, 0]
    for key, value in sd.items():
        m = _BLOCK_KEY.fullmatch(key)
        if not m or m.group(3) != "layernorm_before.weight":
            continue
        stages = (0, 1) if m.group(1) == "A" else (2, 3)
        matches = [s for s in stages if widths[s] == value.shape[0]]
        if len(matches) != 1:
            raise CheckpointError(f"{key} has width {value.shape[0]}: cannot place it among stage widths {widths}")
        counts[matches[0]] += 1
    return tuple(counts)  # type: ignore[return-value]


def _first_block_key(stage: int, depths: tuple[int, ...], suffix: str) -> str:
    """The upstream key ``suffix`` of the first block of ``stage``."""
    kind, first = ("A", 0) if stage < 2 else ("B", 2)
    return f"vit.encoder.layer{kind}.{sum(depths[first:stage])}.{suffix}"


def _arg(args: Any, name: str, default: Any = None) -> Any:
    return getattr(args, name, default) if args is not None else default


def infer_upstream_config(sd: Mapping[str, Tensor], args: Any = None) -> dict[str, Any]:
    """Architecture options of an upstream state dict, as :class:`BHViTConfig` keyword arguments.

    From shapes: ``in_chans``, ``widths``, ``img_size`` (stem position embedding), ``depths``,
    ``mlp_ratios``, ``num_classes``; from key presence: precision (binary downsampling has ``move``;
    fp has no attention quantizer), ``attn_quant``, ``norm`` (BatchNorm has running stats), shifts,
    LayerScale; heads from the LSQ step size, else width/64 (the released models). The window size
    is not stored: 7 unless overridden; ``recu`` comes from ``args`` when present.
    """
    stem = _need(sd, "vit.embeddings.patch_embeddings.proj.weight")
    widths = [stem.shape[0]] + [_need(sd, f"vit.encoder.patch_embed{i}.proj.weight").shape[0] for i in (1, 2, 3)]
    pos = _need(sd, "vit.embeddings.position_embeddings")
    depths = _infer_depths(sd, tuple(widths))
    if min(depths) < 1:
        raise CheckpointError(f"could not find blocks for every stage (found depths {depths})")
    ratios = [
        _need(sd, _first_block_key(s, depths, "intermediate.dense.weight")).shape[0] // widths[s] for s in range(4)
    ]
    keys = set(sd)
    has = lambda pattern: any(re.search(pattern, k) for k in keys)  # noqa: E731
    gsb, lsq = has(r"att_prob_clip$"), has(r"att_prob_quantizer\.alpha$")
    if has(r"patch_embed1\.move$"):
        precision = "binary"
    elif gsb or lsq:
        precision = "some_fp"
    else:
        precision = "fp"
    heads = []
    for s in (2, 3):
        key = _first_block_key(s, depths, "attention.attention.att_prob_quantizer.alpha")
        heads.append(sd[key].numel() if key in sd else max(1, widths[s] // 64))
    classifier = sd.get("classifier.weight")
    return {
        "depths": depths,
        "widths": tuple(widths),
        "mlp_ratios": tuple(ratios),
        "num_heads": tuple(heads),
        "precision": precision,
        "attn_quant": "gsb" if gsb else "lsq",
        "norm": "bn" if has(r"running_mean$") else "ln",
        "shift3": has(r"layerscale_h3\."),
        "shift5": has(r"layerscale_h5\."),
        "layerscale": has(r"output\.layerscale\.alpha$"),
        "num_classes": classifier.shape[0] if classifier is not None else 0,
        "in_chans": stem.shape[1],
        "img_size": (pos.shape[-2] * 4, pos.shape[-1] * 4),
        "window_size": 7,
        "recu": bool(_arg(args, "recu", False)),
    }


# ---------------------------------------------------------------------------------------------
# Loading into our model
# ---------------------------------------------------------------------------------------------
def resize_pos_embeds(sd: dict[str, Tensor], config: BHViTConfig) -> None:
    """Bicubic-resize position embeddings in place to ``config.img_size`` (for other input sizes)."""
    sizes = config.stage_sizes
    stem = sd.get("stem.pos_embed")
    if stem is not None and tuple(stem.shape[-2:]) != sizes[0]:
        sd["stem.pos_embed"] = F.interpolate(stem, size=sizes[0], mode="bicubic", align_corners=False)
    for i in (1, 2, 3):
        key = f"stages.{i}.downsample.pos_embed"
        pos = sd.get(key)
        if pos is None or pos.shape[1] == sizes[i][0] * sizes[i][1]:
            continue
        side = int(round(pos.shape[1] ** 0.5))
        if side * side != pos.shape[1]:
            raise CheckpointError(f"cannot resize non-square position embedding {key} {tuple(pos.shape)}")
        grid = pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=sizes[i], mode="bicubic", align_corners=False)
        sd[key] = grid.permute(0, 2, 3, 1).reshape(1, sizes[i][0] * sizes[i][1], -1)


def load_into(model: BHViT, sd: Mapping[str, Tensor]) -> BHViT:
    """Load ``sd`` (our names) into ``model``; the error names the first missing, unexpected or
    wrongly shaped key."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise CheckpointError(f"checkpoint lacks {len(missing)} key(s) of the model, first: {missing[0]!r}")
    unexpected = [k for k in sd if k not in own]
    if unexpected:
        raise CheckpointError(f"checkpoint has {len(unexpected)} unexpected key(s), first: {unexpected[0]!r}")
    for key, value in sd.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"wrong shape for {key!r}: checkpoint {tuple(value.shape)}, model {tuple(own[key].shape)}"
            )
    model.load_state_dict(sd, strict=True)
    return model


def upstream_state_dict(source: str | Path | Mapping[str, Any]) -> tuple[dict[str, Tensor], Any]:
    """``(state_dict, args)`` of an upstream checkpoint file, safetensors file, or in-memory dict."""
    if isinstance(source, Mapping):
        return _extract_state_dict(source)
    path = Path(source)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), None
    return _extract_state_dict(safe_torch_load(path))


def load_upstream(source: str | Path | Mapping[str, Any], **overrides: Any) -> BHViT:
    """Build our model from one of the authors' checkpoints and return it in eval mode.

    ``source``: a path (``.pth`` from the authors' script, or a ``.safetensors`` state dict) or an
    already-loaded checkpoint / state dict. ``overrides``: config fields to set instead of the
    inferred ones, e.g. ``window_size`` or ``num_heads`` (not stored in the file), or ``img_size``
    (position embeddings are then resized bicubically).
    """
    sd, args = upstream_state_dict(source)
    options = infer_upstream_config(sd, args)
    options.update(overrides)
    try:
        config = BHViTConfig(**options)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint does not give a valid BHViT ({exc})") from None
    ours = convert_upstream_state_dict(sd, config.depths)
    resize_pos_embeds(ours, config)
    model = BHViT(config)
    load_into(model, ours)
    return model.eval()
