"""Entry point for the distributed test: ``torchrun --nproc_per_node 2 ddp_worker.py CONFIG.json``."""

import json
import sys

from bhvit.train import TrainConfig, train

if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        train(TrainConfig.from_dict(json.load(f)))
