"""Top-1 agreement of the packed engine with the float model on a whole test split.

    python benchmarks/agreement.py --checkpoint runs/demo/binary/checkpoint.pt --data fashion_mnist \
        --img-size 32 --json out/agreement.json

Builds the evaluation split exactly as training evaluates it (:func:`bhvit.data.build_datasets`), packs the
checkpoint's model, and reports the fraction of identical top-1 predictions, the accuracy of both, the
largest logit difference, and the exact zeros seen before ``sign`` on the first batch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import bhvit
from bhvit import engine
from bhvit.data import DataConfig, build_datasets
from bhvit.data.transforms import normalize_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, nargs="+")
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--json", default="out/agreement.json")
    args = parser.parse_args()
    bundle = build_datasets(DataConfig(name=args.data, img_size=args.img_size, augment="none"))
    loader = torch.utils.data.DataLoader(bundle.test, batch_size=args.batch, shuffle=False)
    images, labels = map(torch.cat, zip(*((x, y) for x, y in loader)))
    images = normalize_batch(images, bundle.mean, bundle.std)  # as the training loop's evaluation
    rows = []
    for ckpt in args.checkpoint:
        model, _ = bhvit.load_model(ckpt)
        model.eval()
        packed = engine.pack(model)
        report = engine.agreement(model, packed, images, batch_size=args.batch)
        with torch.no_grad():
            acc_float = float(
                (
                    torch.cat([model(images[i : i + args.batch]).argmax(1) for i in range(0, len(images), args.batch)])
                    == labels
                )
                .float()
                .mean()
            )
        acc_packed = float(
            (
                torch.cat([packed(images[i : i + args.batch]).argmax(1) for i in range(0, len(images), args.batch)])
                == labels
            )
            .float()
            .mean()
        )
        zeros = sum(engine.zero_audit(model, images[: args.batch]).values())
        rows.append(
            {
                "checkpoint": ckpt,
                "precision": model.config.precision,
                **report,
                "acc_float": acc_float,
                "acc_packed": acc_packed,
                "exact_zeros_first_batch": zeros,
            }
        )
        print(json.dumps(rows[-1]))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": args.data, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
