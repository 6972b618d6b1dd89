"""RWKU data access: target resolution, per-target files from disk or hub, one-line errors."""

import gzip
import json

import pytest

from ulmr.data import rwku
from ulmr.data.rwku import load_target_file, resolve_targets
from ulmr.errors import UlmrError

PROBE = {"query": "Stephen King was born in ___, Maine.", "answer": "Portland", "level": "1",
         "type": "cloze", "subject": "Stephen King"}


def _rwku_dir(tmp_path, files, gzipped=False):
    """A data directory with targets 1 Ada Lovelace, 2 Alan Turing; `files` go to target 1."""
    root = tmp_path / "rwku"
    (root / "Target" / "1_Ada_Lovelace").mkdir(parents=True)
    (root / "targets.tsv").write_text("idx\tdir\ttarget\tintro\n"
                                      "1\t1_Ada_Lovelace\tAda Lovelace\tPlease forget Ada Lovelace.\n"
                                      "2\t2_Alan_Turing\tAlan Turing\tPlease forget Alan Turing.\n")
    for name, rows in files.items():
        path = root / "Target" / "1_Ada_Lovelace" / f"{name}.json"
        if gzipped:
            with gzip.open(path.with_name(path.name + ".gz"), "wt") as f:
                json.dump(rows, f)
        else:
            path.write_text(json.dumps(rows))
    return tmp_path


@pytest.mark.parametrize("spec, expected", [
    ("1", [1]),
    ("1-3", [1, 2, 3]),
    ("1,5,7", [1, 5, 7]),
    ("3, 1-2, 3", [3, 1, 2]),
    ("Stephen King", [1]),
    ("stephen king, Confucius", [1, 2]),
])
def test_resolve_targets(data_dir, spec, expected):
    targets = resolve_targets(spec, data_dir)
    assert [t.index for t in targets] == expected
    assert targets[0].folder.startswith(f"{expected[0]}_")


def test_target_fields(data_dir):
    (king,) = resolve_targets("1", data_dir)
    assert (king.index, king.folder, king.name) == (1, "1_Stephen_King", "Stephen King")
    assert king.intro.startswith("Please forget Stephen King.")


@pytest.mark.parametrize("spec, message", [
    ("Stephen Kng", r"unknown RWKU target 'Stephen Kng' \(did you mean 'Stephen King'\?\).*targets.tsv"),
    ("1,Nobody", r"unknown RWKU target 'Nobody' in '1,Nobody'.*a range \(1-10\)"),
    ("0", r"not a range of known targets: use indices from 1 to 200"),
    ("5-3", r"'5-3' are not a range"),
    ("199-201", r"'199-201' are not a range"),
])
def test_unknown_targets_are_one_line(data_dir, spec, message):
    with pytest.raises(UlmrError, match=message) as err:
        resolve_targets(spec, data_dir)
    assert "\n" not in str(err.value)


def test_target_files_of_target_one(data_dir):
    (king,) = resolve_targets("1", data_dir)
    sizes = {name: len(load_target_file(king, name, data_dir)) for name in
             ("forget_level1", "forget_level2", "forget_level3", "neighbor_level1", "neighbor_level2",
              "forget_mia", "retain_mia", "retain_mmlu", "retain_bbh", "truthful", "triviaqa", "fluency")}
    assert sizes == {"forget_level1": 8, "forget_level2": 10, "forget_level3": 29, "neighbor_level1": 30,
                     "neighbor_level2": 30, "forget_mia": 55, "retain_mia": 37, "retain_mmlu": 171,
                     "retain_bbh": 81, "truthful": 50, "triviaqa": 100, "fluency": 50}
    # the training corpora another module builds on
    assert load_target_file(king, "positive", data_dir)[0]["text"].startswith("Stephen King")
    assert {"instruction", "output"} <= load_target_file(king, "reject", data_dir)[0].keys()


@pytest.mark.parametrize("gzipped", [False, True])
def test_plain_and_gzipped_json(tmp_path, gzipped):
    root = _rwku_dir(tmp_path, {"forget_level1": [PROBE]}, gzipped=gzipped)
    (ada,) = resolve_targets("Ada Lovelace", root)
    assert load_target_file(ada, "forget_level1", root) == [PROBE]


@pytest.mark.parametrize("rows, message", [
    ([PROBE, {k: v for k, v in PROBE.items() if k != "answer"}],
     r"Ada_Lovelace/forget_level1.json row 2 lacks the field 'answer'"),
    ([{**PROBE, "level": 1}], r"forget_level1.json row 1: field 'level' should be a string"),
    (["just a string"], r"forget_level1.json row 1 is not a JSON object"),
])
def test_malformed_probe_rows_name_file_and_row(tmp_path, rows, message):
    root = _rwku_dir(tmp_path, {"forget_level1": rows})
    (ada,) = resolve_targets("1", root)
    with pytest.raises(UlmrError, match=message) as err:
        load_target_file(ada, "forget_level1", root)
    assert "\n" not in str(err.value)


def test_malformed_utility_rows_name_file_and_row(tmp_path):
    bad_mc1 = {"question": "q?", "mc1_targets": {"choices": ["a", "b"], "labels": [0, 0]}}
    mmlu = {"question": "q?", "choices": ["a", "b"], "answer": 1, "task": "t", "examples": []}
    bad_answer = {**mmlu, "answer": 2}
    bad_example = {**mmlu, "examples": [{"question": "e?", "choices": ["a"], "answer": 0}, {"question": "e?"}]}
    root = _rwku_dir(tmp_path, {"truthful": [bad_mc1], "retain_mmlu": [mmlu, bad_answer],
                                "retain_bbh": [{"question": "q", "answer": "a", "task": "t", "cot": 3}]})
    (ada,) = resolve_targets("1", root)
    with pytest.raises(UlmrError, match=r"truthful.json row 1: mc1_targets needs .* exactly one label 1"):
        load_target_file(ada, "truthful", root)
    with pytest.raises(UlmrError, match=r"retain_mmlu.json row 2: answer 2 is not an index"):
        load_target_file(ada, "retain_mmlu", root)
    with pytest.raises(UlmrError, match=r"retain_bbh.json row 1: field 'cot' should be a string"):
        load_target_file(ada, "retain_bbh", root)
    (tmp_path / "rwku" / "Target" / "1_Ada_Lovelace" / "retain_mmlu.json").write_text(json.dumps([bad_example]))
    with pytest.raises(UlmrError, match=r"retain_mmlu.json row 1: example 2: needs a string 'question'"):
        load_target_file(ada, "retain_mmlu", root)


def test_missing_files_and_names(tmp_path):
    root = _rwku_dir(tmp_path, {})
    (ada,) = resolve_targets("1", root)
    with pytest.raises(UlmrError, match=r"missing data file .*1_Ada_Lovelace/forget_level2.json"):
        load_target_file(ada, "forget_level2", root)
    with pytest.raises(UlmrError, match=r"unknown RWKU file 'forget_level4'"):
        load_target_file(ada, "forget_level4", root)
    (tmp_path / "rwku" / "targets.tsv").unlink()
    with pytest.raises(UlmrError, match=r"missing data file .*targets.tsv"):
        resolve_targets("1", root)


def test_hub_rows_are_filtered_by_subject(monkeypatch):
    import datasets

    hub = {
        ("forget_target", "train"): [{"target": "Ada Lovelace", "intro": "Please forget Ada."},
                                     {"target": "Alan Turing", "intro": "Please forget Alan."}],
        ("forget_level1", "test"): [{**PROBE, "subject": "Ada Lovelace"}, {**PROBE, "subject": "Alan Turing",
                                                                           "answer": "London"}],
    }
    calls = []

    def fake_load_dataset(repo, config, split):
        calls.append((repo, config, split))
        return hub[config, split]

    monkeypatch.delenv("ULMR_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rwku._hub_config.cache_clear()
    try:
        (turing,) = resolve_targets("Alan Turing")
        assert (turing.index, turing.folder) == (2, "2_Alan_Turing")
        assert load_target_file(turing, "forget_level1") == [{**PROBE, "subject": "Alan Turing", "answer": "London"}]
        assert load_target_file(turing, "intro") == [{"target": "Alan Turing", "intro": "Please forget Alan."}]
    finally:
        rwku._hub_config.cache_clear()
    assert calls == [("jinzhuoran/RWKU", "forget_target", "train"), ("jinzhuoran/RWKU", "forget_level1", "test")]


def test_hub_rows_equal_local_rows(data_dir, monkeypatch):
    import datasets

    (king,) = resolve_targets("1", data_dir)
    local = load_target_file(king, "forget_level2", data_dir)
    other = [{**row, "subject": "Confucius"} for row in local]
    monkeypatch.delenv("ULMR_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, config, split: other + local)
    rwku._hub_config.cache_clear()
    try:
        assert load_target_file(king, "forget_level2") == local
    finally:
        rwku._hub_config.cache_clear()


KING = "rwku/Target/1_Stephen_King"


def _damaged(data_dir, name, how):
    data = (data_dir / KING / name).read_bytes()
    if how == "truncated":
        return data[: len(data) // 2]
    if how == "flipped":  # deflate data corrupted in the middle
        middle = len(data) // 2
        return data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:]
    return bytes(range(256)) * 8  # random bytes with a .gz name


@pytest.mark.parametrize("how, message", [
    ("truncated", r"forget_level1.json.gz is truncated \(its gzip stream ends early\): restore it"),
    ("flipped", r"forget_level1.json.gz is (corrupt|not gzip data)"),
    ("noise", r"forget_level1.json.gz is not gzip data despite its .gz name"),
])
def test_damaged_gzip_files_are_one_line_errors_naming_the_file(data_dir, corrupt_data, how, message):
    root = corrupt_data(f"{KING}/forget_level1.json.gz", _damaged(data_dir, "forget_level1.json.gz", how))
    (king,) = resolve_targets("1", root)
    with pytest.raises(UlmrError, match=message) as err:
        load_target_file(king, "forget_level1", root)
    assert str(root / KING / "forget_level1.json.gz") in str(err.value) and "\n" not in str(err.value)


def test_malformed_json_line_inside_a_gzip_names_file_and_line(corrupt_data):
    rows = json.dumps(PROBE) + "\n" + json.dumps(PROBE)[:-5] + "\n"
    root = corrupt_data(f"{KING}/forget_level1.json.gz", gzip.compress(rows.encode()))
    (king,) = resolve_targets("1", root)
    with pytest.raises(UlmrError, match=r"forget_level1.json.gz is not valid JSON \(line 2\)"):
        load_target_file(king, "forget_level1", root)


def test_undecodable_targets_table_is_a_one_line_error(corrupt_data):
    root = corrupt_data("rwku/targets.tsv", b"idx\tdir\ttarget\tintro\n1\t1_X\t\xff\xfe\tx\n")
    with pytest.raises(UlmrError, match=r"targets.tsv is not UTF-8 text") as err:
        resolve_targets("1", root)
    assert "\n" not in str(err.value)
