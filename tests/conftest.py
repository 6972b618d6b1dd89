"""Shared fixtures: the benchmark data in ../shared/data, the tiny random model, the --slow switch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers.utils import logging as hf_logging

# torch and transformers bind their log StreamHandlers to sys.stderr when first configured. Do it
# here, at collection, and not first inside a capsys test (in-process CLI tests): capsys closes its
# stream after the test, and every later log line would print "--- Logging error ---".
hf_logging.get_logger("transformers")

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


@pytest.fixture()
def lively(tiny):
    """The tiny model with its matrices redrawn at N(0, 0.3): greedy text varies from token to token
    (the seeded initialisation repeats one byte), so rows hit stop strings at different steps."""
    model, tokenizer = tiny
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3, generator=generator)
    return model, tokenizer


def data_copy_with(data_dir: Path, root: Path, relative: str, content: bytes) -> Path:
    """`root` laid out as `data_dir` (everything symlinked) except the file `relative`, which holds
    `content`: a data directory with one file corrupted, the shared data untouched."""
    root.mkdir(parents=True, exist_ok=True)
    source, target = data_dir, root
    for part in Path(relative).parts[:-1]:
        for entry in source.iterdir():
            if entry.name != part and not (target / entry.name).exists():
                (target / entry.name).symlink_to(entry)
        source, target = source / part, target / part
        target.mkdir(exist_ok=True)
    for entry in source.iterdir():
        if entry.name != Path(relative).name and not (target / entry.name).exists():
            (target / entry.name).symlink_to(entry)
    (target / Path(relative).name).write_bytes(content)
    return root


@pytest.fixture()
def corrupt_data(data_dir, tmp_path):
    """corrupt_data("tofu/forget01.json", b"...") -> a data directory with that one file replaced."""
    return lambda relative, content: data_copy_with(data_dir, tmp_path / "data", relative, content)
