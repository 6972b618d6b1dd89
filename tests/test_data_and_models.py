"""Data and model access: local data equals the hub path, bad data and bad models fail in one line."""

import gzip
import json

import pytest

from ulmr.cli import main
from ulmr.data.tofu import load_idontknow, load_tofu
from ulmr.errors import UlmrError


def _write_rows(tmp_path, name, rows):
    folder = tmp_path / "tofu"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_local_rows_are_the_files_rows(data_dir):
    rows = load_tofu("forget01_perturbed", data_dir)
    assert len(rows) == 40 and all(len(r["perturbed_answer"]) == 5 for r in rows)
    assert len(load_tofu("world_facts_perturbed", data_dir)) == 117
    assert len(load_idontknow(data_dir)) == 100


def test_hub_path_gives_the_same_rows(data_dir, monkeypatch):
    import datasets

    local = load_tofu("real_authors_perturbed", data_dir)
    calls = []

    def fake_load_dataset(repo, config, split):
        calls.append((repo, config, split))
        return local  # the hub serves the same rows as the raw files

    monkeypatch.delenv("ULMR_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_tofu("real_authors_perturbed") == local
    assert calls == [("locuslab/TOFU", "real_authors_perturbed", "train")]


def test_hub_failure_is_one_line(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no route to host\nlong traceback text")

    monkeypatch.delenv("ULMR_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UlmrError, match="locuslab/TOFU config 'forget01'.*--data-dir") as err:
        load_tofu("forget01")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("rows, message", [
    ([{"question": "q?"}], r"forget01_perturbed.json row 1 lacks the field 'answer'"),
    ([{"question": "q?", "answer": "a", "paraphrased_answer": "p", "perturbed_answer": ["x"] * 5},
      {"question": "q?", "answer": "a", "paraphrased_answer": "p", "perturbed_answer": ["x"] * 4}],
     r"row 2: field 'perturbed_answer' has 4 items, expected 5"),
    ([{"question": 3, "answer": "a", "paraphrased_answer": "p", "perturbed_answer": ["x"] * 5}],
     r"row 1: field 'question' should be a string"),
])
def test_malformed_rows_name_file_and_row(tmp_path, rows, message):
    root = _write_rows(tmp_path, "forget01_perturbed", rows)
    with pytest.raises(UlmrError, match=message):
        load_tofu("forget01_perturbed", root)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "tofu").mkdir()
    (tmp_path / "tofu" / "forget01.json").write_text("\n")
    with pytest.raises(UlmrError, match="forget01.json is empty"):
        load_tofu("forget01", tmp_path)
    with pytest.raises(UlmrError, match="missing data file .*retain99.json"):
        load_tofu("retain99", tmp_path)
    with pytest.raises(UlmrError, match="data directory .* does not exist"):
        load_tofu("forget01", tmp_path / "nowhere")
    with pytest.raises(UlmrError, match="unknown TOFU subset 'forget02'"):
        load_tofu("forget02", tmp_path)


def _cli_error(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # progress bars may precede it
    assert last.startswith("error: ")
    return last


def test_missing_model_folder_is_one_line(capsys, tmp_path):
    err = _cli_error(capsys, ["eval", "--model", str(tmp_path / "no-such-model"), "--data-dir", str(tmp_path)])
    assert "no-such-model" in err and "not found" in err


def test_broken_model_folder_is_one_line(capsys, tmp_path, data_dir):
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "no-such-architecture"}')
    err = _cli_error(capsys, ["eval", "--model", str(bad), "--data-dir", str(data_dir), "--limit", "1"])
    assert "broken" in err


def test_bad_data_dir_in_cli_is_one_line(capsys, tmp_path):
    err = _cli_error(capsys, ["eval", "--model", "tiny-random", "--data-dir", str(tmp_path / "nope"),
                              "--limit", "1"])
    assert "data directory" in err


def test_tiny_model_is_seeded_and_identical_across_builds(tiny):
    from ulmr.models import build_tiny_model

    model, tokenizer = tiny
    rebuilt = build_tiny_model(vocab_size=len(tokenizer))
    for (name, a), (_, b) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert (a == b).all(), name
    assert tokenizer.decode(tokenizer.encode("Héllo, world!")) == "Héllo, world!"


@pytest.mark.parametrize("name, content, message", [
    ("forget01.json", bytes(range(256)) * 4, r"forget01.json is not UTF-8 text \(bad byte at offset 128\): restore it"),
    ("forget01.json", b'{"question": "q?", "answer": "a"}\n{"question": "q?", "answer": \n',
     r"forget01.json is not valid JSON \(line 2\): restore it"),
    ("forget01.json", b'[{"question": "q?", "answer": "a"},\n {"question": ]', r"forget01.json is not valid JSON \(line 2\)"),
    ("forget01.json", gzip.compress(b'[{"question": "q?", "answer": "a"}]'),
     r"forget01.json is not UTF-8 text .*it looks gzip-compressed: rename it forget01.json.gz"),
    ("forget01.json", b"\xef\xbb\xbf" + json.dumps([{"question": "q?", "answer": "a"}]).encode(), None),  # a BOM is fine
])
def test_undecodable_tofu_files_are_one_line_errors_naming_the_file(corrupt_data, name, content, message):
    root = corrupt_data(f"tofu/{name}", content)
    if message is None:
        assert load_tofu("forget01", root) == [{"question": "q?", "answer": "a"}]
        return
    with pytest.raises(UlmrError, match=message) as err:
        load_tofu("forget01", root)
    assert str(root / "tofu" / name) in str(err.value) and "\n" not in str(err.value)


def test_undecodable_refusal_bank_is_a_one_line_error(corrupt_data):
    root = corrupt_data("tofu/idontknow.jsonl", b"I don't know.\n\xff\xfe\n")
    with pytest.raises(UlmrError, match=r"idontknow.jsonl is not UTF-8 text") as err:
        load_idontknow(root)
    assert "\n" not in str(err.value)


def test_ulmr_cpu_bf16_overrides_the_cpus_own_answer_for_dtype_auto(monkeypatch):
    """perf/as_avx2_cpu.py sets ULMR_CPU_BF16=0 so that `run --jobs`'s worker processes resolve auto alike."""
    import torch

    from ulmr import hardware

    hardware.cpu_has_bf16_units.cache_clear()
    try:
        monkeypatch.setenv("ULMR_CPU_BF16", "0")
        assert hardware.resolve_dtype("auto", "cpu") == torch.float32
        hardware.cpu_has_bf16_units.cache_clear()
        monkeypatch.setenv("ULMR_CPU_BF16", "1")
        assert hardware.resolve_dtype("auto", "cpu") == torch.bfloat16
    finally:
        monkeypatch.delenv("ULMR_CPU_BF16")
        hardware.cpu_has_bf16_units.cache_clear()
