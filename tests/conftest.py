"""Shared fixtures: the benchmark data in ../shared/data, the tiny random model, the --slow switch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ULMR_DATA_DIR", REPO.parent / "shared" / "data"))


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the slow tests (real embedded model)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert (SHARED_DATA / "tofu" / "full.json").is_file(), f"benchmark data not found in {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_path() -> str:
    from ulmr.models import resolve_model

    return resolve_model("tiny-random")


@pytest.fixture()
def tiny(tiny_path):
    """(model, tokenizer): the tiny random Llama, fresh for each test (fp32, CPU)."""
    from ulmr.models import load_model

    return load_model(tiny_path, dtype="fp32", device="cpu")
