"""Sharing models: a folder or a Hugging Face Hub repository, through ``huggingface_hub``'s ``ModelHubMixin``.

Optional: ``pip install 'bhvit[hub]'`` (``huggingface_hub``); without it, importing this module raises an
``ImportError`` of one line that says so.

>>> bhvit.hub.save_pretrained(model, "my-bhvit")                   # a BHViT
>>> bhvit.hub.save_pretrained("runs/x/checkpoint.pt", "my-bhvit")   # a checkpoint, with its labels and accuracy
>>> shared = bhvit.hub.from_pretrained("user/name")  # or a folder: .model, .labels, .preprocess, .accuracy, .packed

The model class does not import this module (the architecture sits below sharing, packing and the registry),
so these are functions, not methods of :class:`bhvit.BHViT`.

A shared model is these files:

* ``config.json``: timm's layout (``architecture``, ``num_classes``, ``label_names``, ``pretrained_cfg``,
  ``model_args``: the fields of :class:`bhvit.BHViTConfig`) and bhvit's own entries under ``bhvit``
  (``preprocess``, ``accuracy``);
* ``model.safetensors``: bhvit's model file (:func:`bhvit.save_model`: weights, config, preprocessing,
  labels), which :func:`bhvit.load_model` reads alone;
* ``model.bhvp``: the packed 1-bit model (some-fp and binary models with BatchNorm), run by
  :mod:`bhvit.runtime`, ``bhvit predict --packed`` or ``bhvit-run`` without PyTorch;
* ``README.md``: the model card: what the model is, its measured accuracy when known, the profile table of
  the model and of its packed file, and how to load it.

``accuracy`` is what ``bhvit eval`` prints (``acc1``, ``acc5``, ``n``, ``dataset``); a bhvit training
checkpoint carries its last evaluation, which :func:`save_pretrained` of the checkpoint's path uses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

try:
    from huggingface_hub import ModelCard, ModelCardData, ModelHubMixin, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError
except ImportError:
    raise ImportError(
        "sharing models needs huggingface_hub: pip install 'bhvit[hub]' (or pip install huggingface_hub)"
    ) from None

from bhvit.checkpoint import atomic_write, load_model, save_model
from bhvit.files import file_kind
from bhvit.models.bhvit import BHViT

__all__ = ["PretrainedBHViT", "save_pretrained", "from_pretrained", "CONFIG", "WEIGHTS", "PACKED", "CARD"]

CONFIG, WEIGHTS, PACKED, CARD = "config.json", "model.safetensors", "model.bhvp", "README.md"
ACCURACY_KEYS = ("acc1", "acc5", "n", "dataset")  # bhvit eval's names
PAPER = "https://arxiv.org/abs/2503.02394"


def packable(model: BHViT) -> bool:
    """Whether the packed runtime runs ``model``: binary layers (some-fp or binary) and BatchNorm."""
    return model.config.precision != "fp" and model.config.norm == "bn"


def variant_of(model: BHViT) -> str:
    """The registered variant ``model`` was built as, else the one of its depths (``model_args`` in
    ``config.json`` hold every field, so any variant name rebuilds it exactly), else ``bhvit_tiny``."""
    from bhvit.registry import list_models, model_entry

    named = model.pretrained_cfg.get("architecture")
    if named:
        return named
    same = [n for n in list_models() if tuple(model_entry(n).config.depths) == tuple(model.config.depths)]
    return same[0] if same else "bhvit_tiny"


def _accuracy(value: Any) -> dict[str, Any] | None:
    """``value`` reduced to bhvit eval's accuracy keys; a ValueError unless it holds ``acc1``."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("acc1"), int | float):
        raise ValueError(f"accuracy={value!r}: expected bhvit eval's metrics, a dict with acc1 (and acc5, n, dataset)")
    return {k: value[k] for k in ACCURACY_KEYS if k in value}


class PretrainedBHViT(
    ModelHubMixin,
    library_name="bhvit",
    license="mit",
    pipeline_tag="image-classification",
    tags=["bhvit", "binary-neural-network", "vision-transformer", "image-classification"],
    paper_url=PAPER,
):
    """A BHViT and what travels with it: ``labels`` (class names in the order of the logits), ``preprocess``
    (``{"mean", "std", "resize"}``: what the evaluation did to an image), ``accuracy`` (bhvit eval's metrics)
    and, once loaded, ``packed``: the path of the packed file (None when the model has none)."""

    def __init__(
        self,
        model: BHViT,
        labels: list[str] | None = None,
        preprocess: dict[str, Any] | None = None,
        accuracy: dict[str, Any] | None = None,
        packed: str | None = None,
    ) -> None:
        if not isinstance(model, BHViT):
            raise ValueError(f"expected a bhvit.BHViT, got {type(model).__name__}")
        n = model.config.num_classes
        if labels is not None and (len(labels) != n or not all(isinstance(s, str) and s for s in labels)):
            raise ValueError(f"labels: expected {n} non-empty class names, in the order of the logits")
        self.model = model.eval()
        self.labels = list(labels) if labels is not None else None
        self.preprocess = dict(preprocess) if preprocess is not None else None
        self.accuracy = _accuracy(accuracy)
        self.packed = packed

    # ---- saving ----------------------------------------------------------------------------------------
    def hub_config(self) -> dict[str, Any]:
        """``config.json``: timm's layout (so ``timm.create_model("local-dir:DIR")`` rebuilds the architecture)
        plus bhvit's entries."""
        cfg = self.model.config
        timm_cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model.pretrained_cfg.items()}
        timm_cfg = {k: v for k, v in timm_cfg.items() if v not in (None, "") and k != "architecture"}
        if self.preprocess is not None:  # the evaluation's normalisation, and its crop ratio
            timm_cfg.update(mean=self.preprocess["mean"], std=self.preprocess["std"])
            timm_cfg["crop_pct"] = min(cfg.img_size) / self.preprocess["resize"]
        out: dict[str, Any] = {
            "architecture": variant_of(self.model),
            "num_classes": cfg.num_classes,
            "num_features": cfg.widths[-1],
            "pretrained_cfg": timm_cfg,
            "model_args": cfg.to_dict(),
        }
        if self.labels is not None:
            out["label_names"] = self.labels
        out["bhvit"] = {"preprocess": self.preprocess, "accuracy": self.accuracy}
        return out

    def _save_pretrained(self, save_directory: Path) -> None:
        """``model.safetensors``, ``model.bhvp`` (when packable), ``config.json`` and ``README.md``, each
        written atomically; a packed file left by an earlier save of an unpackable model is removed."""
        from bhvit.engine import pack, save_packed

        save_model(self.model, save_directory / WEIGHTS, preprocess=self.preprocess, labels=self.labels)
        packed = save_directory / PACKED
        if packable(self.model):
            save_packed(pack(self.model), packed, preprocess=self.preprocess, labels=self.labels)
        else:
            packed.unlink(missing_ok=True)
        text = json.dumps(self.hub_config(), indent=2) + "\n"
        atomic_write(save_directory / CONFIG, lambda tmp: Path(tmp).write_text(text))
        card = str(self.model_card(packed if packed.is_file() else None))
        atomic_write(save_directory / CARD, lambda tmp: Path(tmp).write_text(card, encoding="utf-8"))

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The model card (huggingface_hub calls this for a folder that has none)."""
        return self.model_card(None)

    def model_card(self, packed: Path | None) -> ModelCard:
        """``README.md``: Hub metadata, what the model is, accuracy, profile tables, usage."""
        from bhvit.profile import profile_model, profile_packed

        cfg = self.model.config
        arch = variant_of(self.model)
        size = f"{cfg.img_size[0]}×{cfg.img_size[1]}"
        title = f"{arch} ({cfg.precision.replace('_', '-')}, {size}, {cfg.num_classes} classes)"
        data = ModelCardData(
            library_name="bhvit",
            license="mit",
            pipeline_tag="image-classification",
            tags=["bhvit", "binary-neural-network", "vision-transformer", "image-classification"],
        )
        acc = self.accuracy
        if acc is None:
            measured = "Not measured here: pass `accuracy=` (what `bhvit eval` prints) to `save_pretrained`."
        else:
            top5 = f" (top-5 {acc['acc5']:.2f} %)" if "acc5" in acc else ""
            where = f" on {acc['dataset']}" if "dataset" in acc else ""
            images = f" ({acc['n']:,} images)" if "n" in acc else ""
            measured = f"Top-1 **{acc['acc1']:.2f} %**{top5}{where}{images}, as `bhvit eval` measured it."
        files = [
            f"- `{CONFIG}`: the configuration (timm's layout; bhvit's preprocessing and accuracy under `bhvit`)",
            f"- `{WEIGHTS}`: the float weights with config, preprocessing and labels (`bhvit.load_model`)",
        ]
        if packed is not None:
            files.append(
                f"- `{PACKED}`: the packed 1-bit model, run without PyTorch by `bhvit.runtime`, "
                f"`bhvit predict --packed` and `bhvit-run`"
            )
        lines = [
            f"# {title}",
            "",
            f"A BHViT, the Binarized Hybrid Vision Transformer (Gao et al., CVPR 2025, [arXiv 2503.02394]({PAPER})), "
            "saved by bhvit.",
            "",
            "## Accuracy",
            "",
            measured,
            "",
            "## Files",
            "",
            *files,
            "",
            "## Profile",
            "",
            "```text",
            profile_model(self.model, arch).table(),
            "```",
        ]
        if packed is not None:
            prof = profile_packed(packed)
            prof.path = packed.name  # as the repository holds it, not where it was written
            lines += ["", "### The packed file", "", "```text", prof.table(), "```"]
        lines += [
            "",
            "## Use",
            "",
            "```python",
            "import bhvit",
            'model = bhvit.hub.from_pretrained("REPO_OR_FOLDER").model   # the float model (PyTorch)',
            "```",
        ]
        if packed is not None:
            lines += [
                "",
                "```bash",
                f"bhvit predict image.jpg --packed {PACKED}   # the 1-bit model, no PyTorch",
                "```",
            ]
        return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")

    # ---- loading ---------------------------------------------------------------------------------------
    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        config: dict[str, Any] | None = None,
        **unused: Any,
    ) -> PretrainedBHViT:
        def fetch(name: str) -> Path | None:
            if os.path.isdir(model_id):
                path = Path(model_id) / name
                return path if path.is_file() else None
            try:
                return Path(
                    hf_hub_download(
                        repo_id=model_id,
                        filename=name,
                        revision=revision,
                        cache_dir=cache_dir,
                        force_download=force_download,
                        token=token,
                        local_files_only=local_files_only,
                    )
                )
            except EntryNotFoundError:
                return None

        weights = fetch(WEIGHTS)
        if weights is None:
            raise FileNotFoundError(f"{model_id}: no {WEIGHTS}; save_pretrained writes one")
        model, meta = load_model(weights)
        own = (config or {}).get("bhvit") or {}
        packed = fetch(PACKED)
        return cls(
            model,
            labels=meta.get("labels"),
            preprocess=meta.get("preprocess"),
            accuracy=own.get("accuracy"),
            packed=str(packed) if packed is not None else None,
        )


def _checkpoint_accuracy(path: Path) -> dict[str, Any] | None:
    """The last evaluation a bhvit training checkpoint carries, with its dataset; None for other files."""
    from bhvit.upstream import safe_torch_load

    if file_kind(path) != "torch":
        return None
    ck = safe_torch_load(path)
    if not isinstance(ck, dict) or not isinstance(ck.get("metrics"), str):
        return None
    metrics = json.loads(ck["metrics"])
    if "acc1" not in metrics:
        return None
    dataset = json.loads(ck.get("train_config") or "{}").get("data", {}).get("name")
    return _accuracy({**metrics, **({"dataset": dataset} if dataset else {})})


def save_pretrained(
    source: BHViT | str | os.PathLike,
    save_directory: str | os.PathLike,
    *,
    labels: list[str] | None = None,
    preprocess: dict[str, Any] | None = None,
    accuracy: dict[str, Any] | None = None,
    **hub_options: Any,
) -> str | None:
    """Write the folder described above for ``source``: a :class:`bhvit.BHViT` or a checkpoint path (its
    labels, preprocessing and, for a training checkpoint, last evaluation are used unless given).
    ``hub_options`` go to ``ModelHubMixin.save_pretrained`` (``push_to_hub=True, repo_id="user/name"``,
    ...); returns the commit URL when pushed."""
    if isinstance(source, BHViT):
        model, meta, measured = source, {}, None
    else:
        model, meta = load_model(source)
        measured = _checkpoint_accuracy(Path(source))
    shared = PretrainedBHViT(
        model,
        labels=labels if labels is not None else meta.get("labels"),
        preprocess=preprocess if preprocess is not None else meta.get("preprocess"),
        accuracy=accuracy if accuracy is not None else measured,
    )
    return shared.save_pretrained(save_directory, **hub_options)


def from_pretrained(model_id: str | os.PathLike, **hub_options: Any) -> PretrainedBHViT:
    """A shared model from a folder or a Hub id (``user/name``), with its labels, preprocessing, accuracy
    and packed file. ``hub_options`` go to ``ModelHubMixin.from_pretrained`` (``revision``, ``cache_dir``,
    ``token``, ``local_files_only``, ...). A path that names no folder is a FileNotFoundError (it is
    never sent to the Hub)."""
    text = os.fspath(model_id)
    if not os.path.isdir(text):
        looks_local = text.startswith((".", "/", "~")) or text.count("/") != 1 or os.path.exists(text)
        if looks_local:
            raise FileNotFoundError(f"{text}: no such folder (from_pretrained takes a folder or a Hub id user/name)")
    return PretrainedBHViT.from_pretrained(text, **hub_options)
