"""The package's layers (issue 18): a module imports only what sits below it, so that a change to one layer
never needs the ones above and the import graph has no cycle.

    rules, quant, layers  <  models (architecture, variants)  <  registry, checkpoint, upstream, profile
    <  engine (packing)  <  hub (sharing)  <  train, data  <  cli

Each check imports one module in a fresh interpreter and lists which higher layers came with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# module -> packages it must not import (directly or through anything it imports)
ABOVE = {
    "bhvit.models": ["bhvit.registry", "bhvit.hub", "bhvit.engine", "bhvit.train", "bhvit.data", "bhvit.cli"],
    "bhvit.registry": ["bhvit.hub", "bhvit.engine", "bhvit.train", "bhvit.data", "bhvit.cli"],
    "bhvit.checkpoint": ["bhvit.hub", "bhvit.engine", "bhvit.train", "bhvit.cli"],
    "bhvit.engine": ["bhvit.hub", "bhvit.train", "bhvit.data", "bhvit.cli"],
    "bhvit.profile": ["bhvit.hub", "bhvit.train", "bhvit.data", "bhvit.cli"],
}


def _imported_with(module: str) -> list[str]:
    """The bhvit modules loaded by ``import module`` in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('bhvit'))))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.parametrize("module", sorted(ABOVE))
def test_a_layer_imports_nothing_above_it(module):
    loaded = _imported_with(module)
    above = [m for m in loaded if any(m == top or m.startswith(top + ".") for top in ABOVE[module])]
    assert not above, f"{module} imports {above}, which sit above it"
