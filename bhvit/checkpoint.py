"""bhvit's own model file: safetensors weights plus the model's config, written atomically.

A ``.safetensors`` file whose metadata holds ``format = "bhvit"``, ``format_version``, ``config``
(JSON of :class:`bhvit.BHViTConfig`) and optionally ``preprocess`` (JSON: ``mean``, ``std``,
``resize``, ``crop``, ``grayscale``) and ``labels`` (JSON list of class names).
:func:`load_model` also reads the authors' checkpoints and bhvit training checkpoints.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .files import file_kind, packed_file_message
from .models.bhvit import BHViT, BHViTConfig
from .upstream import CheckpointError, load_into, load_upstream, safe_torch_load

__all__ = ["save_model", "load_model", "read_metadata", "atomic_write", "NoSpaceError", "FORMAT_VERSION"]

FORMAT_VERSION = "1"


def _new_temp_file(path: Path) -> Path:
    """An empty ``.NAME.XXXXXXXX.tmp`` beside ``path``, created with mode 0o666 so the umask applies
    exactly as for ``open(path, "w")`` (``mkstemp`` would give 0600, and the rename would keep it)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"could not create a temporary file beside {path}")


FULL_DISK = (errno.ENOSPC, errno.EDQUOT)  # "no space left on device", "disk quota exceeded"


class NoSpaceError(OSError):
    """The file system (or the user's quota) filled up while writing a file: one line naming it."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(
            f"no space left on device while writing {path} (any previous version of it is intact): free some "
            "space or write elsewhere"
        )
        self.errno = errno.ENOSPC
        self.path = str(path)


def atomic_write(path: str | Path, write: Any) -> Path:
    """Call ``write(tmp_path)``, fsync, then rename onto ``path``: a reader (or a crash) never sees a
    partial file, and the previous file stays intact until the new one is complete. The file gets the
    mode a plain ``open(path, "w")`` would give: ``0o666 & ~umask``. A full disk (or quota) while
    writing raises :class:`NoSpaceError` naming ``path``; the temporary file is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temp_file(path)
    except OSError as e:
        raise (NoSpaceError(path) if e.errno in FULL_DISK else e) from None
    mode = stat.S_IMODE(os.stat(tmp).st_mode)  # 0o666 & ~umask, as the kernel applied it
    try:
        write(tmp)
        os.chmod(tmp, mode)  # a writer may have replaced the file (safetensors creates it 0600)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in FULL_DISK:
            raise NoSpaceError(path) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_model(
    model: BHViT, path: str | Path, *, preprocess: Mapping[str, Any] | None = None, labels: list[str] | None = None
) -> Path:
    """Write ``model`` as a bhvit safetensors file (weights + config [+ preprocessing, labels])."""
    meta = {"format": "bhvit", "format_version": FORMAT_VERSION, "config": json.dumps(model.config.to_dict())}
    if preprocess is not None:
        meta["preprocess"] = json.dumps(dict(preprocess))
    if labels is not None:
        meta["labels"] = json.dumps(list(labels))
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return Path(path)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded bhvit metadata of a safetensors file (``{}`` if it has none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return {k: json.loads(v) if k in ("config", "preprocess", "labels") else v for k, v in meta.items()}


def _from_safetensors(path: Path, overrides: dict[str, Any]) -> tuple[BHViT, dict[str, Any]]:
    try:
        meta = read_metadata(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {str(path)!r} as safetensors: {exc}") from None
    if meta.get("format") != "bhvit":
        return load_upstream(path, **overrides), {}  # a bare upstream state dict in safetensors
    config = BHViTConfig.from_dict({**meta["config"], **overrides})
    model = load_into(BHViT(config), load_file(str(path)))
    return model, meta


def _from_torch(path: Path, overrides: dict[str, Any]) -> tuple[BHViT, dict[str, Any]]:
    obj = safe_torch_load(path)
    stored = obj.get("model_config", obj.get("config")) if isinstance(obj, Mapping) else None
    if isinstance(stored, Mapping) and "model" in obj:
        config = BHViTConfig.from_dict({**stored, **overrides})  # a bhvit training checkpoint
        meta = {k: obj[k] for k in ("preprocess", "labels") if k in obj}
        return load_into(BHViT(config), obj["model"]), meta
    return load_upstream(obj, **overrides), {}


def load_model(path: str | Path, **overrides: Any) -> tuple[BHViT, dict[str, Any]]:
    """Load any BHViT checkpoint as ``(model in eval mode, metadata)``.

    Accepts bhvit safetensors files (:func:`save_model`), bhvit training checkpoints (a torch file
    with ``model`` and ``model_config``, optionally ``preprocess`` and ``labels``) and the authors'
    files (see :func:`bhvit.load_upstream`).
    """
    path = Path(path)
    kind = file_kind(path)
    if kind == "missing":
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if kind == "packed":
        raise CheckpointError(packed_file_message(path))
    model, meta = _from_torch(path, overrides) if kind == "torch" else _from_safetensors(path, overrides)
    return model.eval(), meta


def convert_checkpoint(src: str | Path, dst: str | Path, **overrides: Any) -> Path:
    """Convert an authors' (or any loadable) checkpoint to a bhvit safetensors file."""
    model, meta = load_model(src, **overrides)
    with torch.no_grad():
        return save_model(model, dst, preprocess=meta.get("preprocess"), labels=meta.get("labels"))
