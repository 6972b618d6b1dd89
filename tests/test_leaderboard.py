"""The leaderboard from synthetic result files: seeds, forget quality, skipped files, byte-identical
regeneration and the CLI (directions, uncertainty, bolding, summaries, budgets and averaging over
targets: test_leaderboard_trust.py)."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean

import pytest
from scipy.stats import ks_2samp

from leaderboard import aggregate, build_leaderboard, load_results, render_markdown
from ulmr.benchmarks.registry import get_benchmark
from ulmr.cli import main
from ulmr.results import RESULT_SCHEMA, write_json_atomic

MODEL = "tiny-random"
RETAIN_RATIOS = {0: [0.9, 1.1, 1.0, 0.8, 1.2, 0.95], 1: [0.7, 1.3, 1.05, 0.85, 1.15, 1.0]}
GA_RATIOS = {0: [0.1, 0.2, 0.3, 0.9, 1.0, 0.4], 1: [0.5, 0.6, 0.7, 0.8, 1.1, 1.2], 2: [0.2, 0.25, 0.9, 1.0, 1.4, 0.3]}


def result(benchmark, selection, method, seed, metrics=None, ratios=None, status="ok", **fields):
    """A stored result in the schema; metrics default to 0.5 in every column of the benchmark."""
    columns = [key for key, _ in get_benchmark(benchmark).columns if key != "forget_quality"]
    return {"schema": RESULT_SCHEMA, "benchmark": benchmark, "selection": selection, "model": MODEL,
            "method": method, "seed": seed, "status": status,
            "metrics": {key: 0.5 for key in columns} | (metrics or {}) if status == "ok" else {},
            "per_question": {"forget_truth_ratio": ratios} if ratios else {},
            "eval": {"limit": 4},
            "provenance": {"versions": {"ulmr-bench": "0.1.0", "torch": "2.13.0"}, "git_revision": "abc123",
                           "python": "3.11.2", "machine": "x86_64 test cpu, 2 cores",
                           "created": f"2025-01-0{seed + 1}T12:00:00Z"},
            **fields}


def tofu(method, seed, ratios, rouge, utility, **fields):
    return result("tofu", "forget01", method, seed, {"forget_rougeL_recall": rouge, "model_utility": utility},
                  ratios, **fields)


def rwku(method, fm, rm, forget_all, **fields):
    return result("rwku", "1", method, 0, {"mia_fm": fm, "mia_rm": rm, "forget_all": forget_all},
                  preparation={"injected": True}, eval={"limit": None, "limits": {"rwku_utility": 10}}, **fields)


TOFU_RESULTS = {
    "tofu/before.json": tofu("before", 0, [0.05, 0.1, 0.1, 0.2, 0.15, 0.1], rouge=0.9, utility=0.5),
    "tofu/retain-0.json": tofu("retain", 0, RETAIN_RATIOS[0], rouge=0.1, utility=0.6),
    "tofu/retain-1.json": tofu("retain", 1, RETAIN_RATIOS[1], rouge=0.1, utility=0.6),
    # ga: forget ROUGE-L 0.3, 0.4, 0.5 -> 0.4 ± 0.1; utility 0.45 each; seed 2 has no retain twin
    **{f"tofu/ga-{seed}.json": tofu("ga", seed, GA_RATIOS[seed], rouge=0.3 + 0.1 * seed, utility=0.45)
       for seed in range(3)},
    "tofu/npo-0.json": tofu("npo", 0, GA_RATIOS[1], rouge=0.2, utility=0.4),
    "tofu/npo-1.json": result("tofu", "forget01", "npo", 1, status="failed",
                              error="CUDA out of memory\nTraceback ..."),
}
RWKU_RESULTS = {
    # MIA RM: before 2.0, ga 2.5, npo 1.8 -> npo is closest to before
    "rwku/before.json": rwku("before", fm=2.0, rm=2.0, forget_all=0.8),
    "rwku/ga.json": rwku("ga", fm=3.0, rm=2.5, forget_all=0.2),
    "rwku/npo.json": rwku("npo", fm=2.6, rm=1.8, forget_all=0.3),
}


def write_results(root: Path, results: dict[str, dict]) -> Path:
    for name, data in results.items():
        write_json_atomic(root / name, data)
    return root


@pytest.fixture()
def results_dir(tmp_path) -> Path:
    root = write_results(tmp_path / "results", TOFU_RESULTS | RWKU_RESULTS)
    (root / "tofu" / "ga-0.samples.jsonl").write_text('{"task": "x"}\n')  # not a result: ignored silently
    (root / "tofu" / "ga-0.artifacts.json").write_text('{"pairs": []}')  # a method's sidecar: the same
    (root / "tune" / "tofu" / "ga").mkdir(parents=True)  # `ulmr-bench tune`'s grid points: the same
    (root / "tune" / "tofu" / "ga" / "lr_1e-05.json").write_text('{"scores": {}}')
    (root / "broken.json").write_text('{"schema": "ulmr-bench/result/v1", "benchmark": ')
    (root / "nested").mkdir()
    (root / "nested" / "foreign.json").write_text(json.dumps({"hello": "world"}))
    return root


def tofu_table(results_dir):
    return next(t for t in aggregate(load_results(results_dir)[0]) if t.benchmark == "tofu")


def markdown_cell(markdown: str, section: str, method: str, header: str, part: str | None = None) -> str:
    """The text of one cell of a rendered table: the row of `method` in the first table with column
    `header` under the heading `section` (after the line `part`, when given)."""
    text = markdown.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    if part is not None:
        text = text.split(f"\n{part}\n", 1)[1]
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        if lines and lines[0].startswith("| ") and header in _cells(lines[0]):
            row = next(line for line in lines if line.startswith(f"| {method} |"))
            return _cells(row)[_cells(lines[0]).index(header)]
    raise AssertionError(f"no table with column {header!r} in {section!r}")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_cells_are_mean_and_sample_standard_deviation_over_seeds(results_dir):
    rows = {row.method: row for row in tofu_table(results_dir).rows}
    assert list(rows) == ["before", "retain", "ga", "npo"]
    assert rows["ga"].seeds == [0, 1, 2]
    assert rows["ga"].cells["forget_rougeL_recall"].mean == pytest.approx(0.4)
    assert rows["ga"].cells["forget_rougeL_recall"].spread == pytest.approx(0.1)  # sqrt((0.01 + 0 + 0.01) / 2)
    assert rows["npo"].cells["forget_rougeL_recall"].spread is None  # its second seed failed
    markdown = render_markdown(aggregate(load_results(results_dir)[0]), [])
    assert markdown_cell(markdown, f"TOFU forget01 | {MODEL}", "ga", "Forget ROUGE-L") == "0.4000 ± 0.10"
    # one seed, no per-question values: no SE, so never bold
    assert markdown_cell(markdown, f"TOFU forget01 | {MODEL}", "npo", "Forget ROUGE-L") == "0.2000"
    assert markdown_cell(markdown, f"TOFU forget01 | {MODEL}", "npo", "Seeds") == "1"


def test_forget_quality_is_the_ks_p_value_against_the_retain_run_of_the_same_seed(results_dir):
    rows = {row.method: row for row in tofu_table(results_dir).rows}
    # seed 2 has no retain twin: it is measured against the lowest retain seed
    expected = [ks_2samp(GA_RATIOS[seed], RETAIN_RATIOS[retain_seed]).pvalue
                for seed, retain_seed in ((0, 0), (1, 1), (2, 0))]
    assert rows["ga"].cells["forget_quality"].mean == pytest.approx(fmean(expected), abs=1e-12)
    assert rows["retain"].cells["forget_quality"].mean == pytest.approx(1.0)
    assert rows["npo"].cells["forget_quality"].mean == pytest.approx(
        ks_2samp(GA_RATIOS[1], RETAIN_RATIOS[0]).pvalue, abs=1e-12)


def test_forget_quality_is_na_with_a_note_when_no_retain_result_exists(tmp_path):
    root = write_results(tmp_path, {name: data for name, data in TOFU_RESULTS.items() if "retain" not in name})
    markdown = render_markdown(aggregate(load_results(root)[0]), [])
    assert markdown_cell(markdown, f"TOFU forget01 | {MODEL}", "ga", "Forget quality") == "n/a"
    assert "- Forget quality n/a: no retain-model result" in markdown


def test_regenerating_gives_identical_bytes(results_dir, tmp_path):
    first = build_leaderboard(results_dir, tmp_path / "first")
    second = build_leaderboard(results_dir, tmp_path / "second")
    assert [p.name for p in first.files] == [p.name for p in second.files]
    assert [p.name for p in first.files] == ["leaderboard.md", f"rwku-1-{MODEL}.png", f"tofu-forget01-{MODEL}.png"]
    for a, b in zip(first.files, second.files):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_corrupted_and_foreign_files_are_skipped_and_reported(results_dir):
    results, skipped = load_results(results_dir)
    assert len(results) == len(TOFU_RESULTS) + len(RWKU_RESULTS)
    assert [(s.path, s.reason.split(" (")[0]) for s in skipped] == [
        ("broken.json", "not valid JSON"), ("nested/foreign.json", "not a ulmr-bench result")]
    markdown = render_markdown(aggregate(results), skipped)
    assert "## Skipped files\n\n- `broken.json`: not valid JSON" in markdown


def test_a_second_result_for_the_same_run_is_skipped(results_dir):
    write_json_atomic(results_dir / "zz-copy" / "ga-0.json", TOFU_RESULTS["tofu/ga-0.json"])
    _, skipped = load_results(results_dir)
    assert str(skipped[-1]) == "zz-copy/ga-0.json: same run as tofu/ga-0.json"


def test_failed_runs_provenance_and_directions_are_listed_under_the_table(results_dir):
    markdown = render_markdown(aggregate(load_results(results_dir)[0]), [])
    tofu_section = markdown.split(f"## TOFU forget01 | {MODEL}")[1]
    assert "Failed runs:\n\n- npo seed 1: CUDA out of memory\n" in tofu_section
    assert "Lower is better: Forget ROUGE-L." in tofu_section
    assert "Closest to the retain row is better: Forget Prob." in tofu_section
    assert "  - evaluated on: first 4 docs per task (`eval.limit`)" in tofu_section
    assert "  - git revisions: abc123" in tofu_section
    rwku_section = markdown.split(f"## RWKU 1 | {MODEL}")[1].split("## TOFU")[0]
    assert "Closest to the before row is better: MIA RM, MIA RM-zlib, MIA RM-MinK." in rwku_section
    assert "  - knowledge injected before unlearning (`preparation.injected`): True" in rwku_section
    assert ("  - evaluated on: full task sets except rwku_utility: first 10 (`eval.limits`)"
            in rwku_section)


def test_the_notes_say_which_prepared_model_and_compute_dtype_each_run_used(tmp_path):
    def prepared(loss):
        return {"label": "tofu-target", "training": {"final_loss": loss}}

    results = [tofu("ga", seed, GA_RATIOS[seed], rouge=0.3, utility=0.45, preparation=prepared(loss),
                    unlearning={"compute_dtype": dtype})
               for seed, loss, dtype in [(0, 0.18053641, "float32"), (1, 0.18053641, "float32"),
                                         (2, 0.18539714, "bfloat16")]]
    results.append(tofu("retain", 0, RETAIN_RATIOS[0], rouge=0.1, utility=0.6,
                        preparation={"label": "tofu-retain", "training": {"final_loss": 0.3854}}))
    root = write_results(tmp_path, {f"{r['method']}-{r['seed']}.json": r for r in results})
    markdown = render_markdown(aggregate(load_results(root)[0]), [])
    assert "tofu-retain 0.3854 × 1; tofu-target 0.180536 × 2, 0.185397 × 1" in markdown
    assert "else fp32): bfloat16 × 1, float32 × 2\n" in markdown


def test_cli_writes_the_files_and_prints_their_paths(results_dir, tmp_path, capsys):
    output = tmp_path / "board"
    main(["leaderboard", "--results-dir", str(results_dir), "--output", str(output)])
    out, err = capsys.readouterr()
    assert out.splitlines() == [str(output / "leaderboard.md"), str(output / f"rwku-1-{MODEL}.png"),
                                str(output / f"tofu-forget01-{MODEL}.png")]
    assert all(Path(line).stat().st_size > 0 for line in out.splitlines())
    assert err.splitlines()[0].startswith("skipped broken.json: not valid JSON")


def test_an_empty_results_dir_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["leaderboard", "--results-dir", str(tmp_path / "results"), "--output", str(tmp_path / "board")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: no results in {tmp_path / 'results'}: run `ulmr-bench run` first\n"
    assert not (tmp_path / "board").exists()


def test_results_are_written_readable_by_others(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        path = write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_committed_leaderboard_is_what_its_committed_results_give():
    committed = Path(__file__).resolve().parents[1] / "leaderboard"
    results, skipped = load_results(committed / "results")
    assert results and not skipped
    assert render_markdown(aggregate(results), skipped) == (committed / "leaderboard.md").read_text(encoding="utf-8")
