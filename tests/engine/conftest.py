"""Shared fixtures of the packed-engine tests: every test that takes ``isa`` runs on each code path."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from bhvit.engine import kernels

ISAS = kernels.available_isas()


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    with kernels.use_isa(request.param):
        yield request.param


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    with kernels.num_threads(request.param):
        yield request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
