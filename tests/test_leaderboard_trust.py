"""What makes the leaderboard trustworthy: every column's direction, the standard error over
questions (a seeded bootstrap over the docs of the stored samples), bold only where the best is
separated, the summary tables, what each method optimised, and RWKU's per-target protocol."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

from leaderboard import aggregate, build_leaderboard, load_results, render_markdown
from leaderboard.plot import alpha_panels, pareto_front
from leaderboard.tables import Cell, separated_best
from leaderboard.uncertainty import bootstrap_se, bootstrap_se_of_mean
from ulmr.benchmarks.registry import (CLOSEST_TO_BEFORE, CLOSEST_TO_HALF, CLOSEST_TO_REFERENCE, HIGHER, LOWER,
                                      DocStatistic, get_benchmark)
from ulmr.results import RESULT_SCHEMA, write_json_atomic

MODEL = "tiny-random"


def result(benchmark, selection, method, seed, metrics, **fields):
    """A stored result in the schema, with only the given metrics."""
    return {"schema": RESULT_SCHEMA, "benchmark": benchmark, "selection": selection, "model": MODEL,
            "method": method, "seed": seed, "status": "ok", "metrics": metrics, "per_question": {},
            "eval": {"limit": None}, **fields}


def write(root: Path, results: dict[str, dict], samples: dict[str, list[dict]] | None = None) -> Path:
    """Results as JSON files; samples (result file name -> records) as JSON Lines beside them."""
    for name, data in results.items():
        if samples and name in samples:
            data = {**data, "samples_file": Path(name).with_suffix(".samples.jsonl").name}
            lines = "".join(json.dumps(record) + "\n" for record in samples[name])
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).with_suffix(".samples.jsonl").write_text(lines)
        write_json_atomic(root / name, data)
    return root


def section(markdown: str, title: str) -> str:
    return markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str, first_header: str) -> dict[str, dict[str, str]]:
    """The first table in `text` whose third header is `first_header`: method -> header -> cell."""
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        if lines and lines[0].startswith("| Method |"):
            headers = [c.strip() for c in lines[0].strip("|").split("|")]
            if headers[2] == first_header:
                return {cells[0]: dict(zip(headers, cells)) for cells in
                        ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    raise AssertionError(f"no table starting with {first_header!r}")


# ---- directions -----------------------------------------------------------------------------------

def test_every_column_of_both_benchmarks_has_a_direction_that_makes_sense_for_unlearning():
    tofu, rwku = get_benchmark("tofu"), get_benchmark("rwku")
    for bench in (tofu, rwku):
        for key, _ in [*bench.columns, *bench.summary_columns]:
            assert bench.direction(key) is not None, (bench.name, key)
    # MIA AUROC: an attack's advantage is |AUROC - 0.5|; below 0.5 is over-unlearning, not better
    assert {rwku.direction(k) for k in ("mia_auroc", "mia_auroc_zlib", "mia_auroc_mink")} == {CLOSEST_TO_HALF}
    assert rwku.direction("mia_rm") == CLOSEST_TO_BEFORE and rwku.direction("mia_fm") == HIGHER
    assert rwku.direction("forget_all") == LOWER and rwku.direction("neighbor_all") == HIGHER
    assert rwku.direction("utility_mean") == HIGHER and rwku.direction("utility_flu") == HIGHER
    # TOFU: Prob is a likelihood: closest to the retain model's; ROUGE-L lower; TR min(R, 1/R) higher
    assert tofu.direction("forget_prob") == CLOSEST_TO_REFERENCE and tofu.reference_role == "retain"
    assert tofu.direction("forget_rougeL_recall") == LOWER and tofu.direction("forget_truth_ratio") == HIGHER
    assert tofu.direction("forget_quality") == HIGHER and tofu.direction("model_utility") == HIGHER
    assert tofu.direction("retain_prob") == HIGHER and tofu.direction("world_facts_truth_ratio") == HIGHER


def _three_seeds(benchmark, selection, method, values_by_key, **fields):
    """Three seeds of a method: values_by_key maps a metric to its three values."""
    return {f"{benchmark}-{selection}/{method}-{seed}.json":
            result(benchmark, selection, method, seed, {key: values[seed] for key, values in values_by_key.items()},
                   **fields) for seed in range(3)}


# per-doc records whose bootstrap gives q = 0 for the columns the ranking tests use (constant values;
# FM texts all below RM texts), so that those cells have both terms of their SE
QUIET_SAMPLES = {
    "rwku": [*({"task": task, "doc_id": i, "rougeL_recall": 0.5} for task in
               ("rwku_forget_fb", "rwku_forget_qa", "rwku_forget_aa") for i in range(3)),
             *({"task": "rwku_mia", "doc_id": i, "fm_loss": [s, x], "fm_zlib": [s, x]}
               for i, (s, x) in enumerate([("FM", 1.0), ("RM", 2.0), ("FM", 1.0), ("RM", 2.0)]))],
    "tofu": [*({"task": "tofu_forget01_forget_prob", "doc_id": i, "prob": 0.5, "truth_ratio": 0.5} for i in range(3)),
             *({"task": "tofu_forget01_forget_rouge", "doc_id": i, "rougeL_recall": 0.5} for i in range(3))],
}


def quiet(results: dict[str, dict]) -> dict[str, list[dict]]:
    """QUIET_SAMPLES for every result."""
    return {name: QUIET_SAMPLES[data["benchmark"]] for name, data in results.items()}


@pytest.fixture()
def ranked(tmp_path):
    results = {
        # MIA AUROC: ga pushed it to 0.40 (over-unlearned), npo to 0.52: npo is closer to 0.5
        **_three_seeds("rwku", "1", "ga", {"mia_auroc": [0.40, 0.41, 0.39], "mia_rm": [2.5, 2.51, 2.49],
                                           "forget_all": [0.10, 0.11, 0.09], "mia_fm": [3.0, 3.01, 2.99]}),
        **_three_seeds("rwku", "1", "npo", {"mia_auroc": [0.52, 0.53, 0.51], "mia_rm": [1.9, 1.91, 1.89],
                                            "forget_all": [0.30, 0.31, 0.29], "mia_fm": [2.6, 2.61, 2.59]}),
        "rwku-1/before-0.json": result("rwku", "1", "before", 0, {"mia_auroc": 0.55, "mia_rm": 2.0,
                                                                  "forget_all": 0.8, "mia_fm": 2.0}),
        # TOFU Forget Prob: the retain model gives 0.15; ga's 0.05 is further from it than npo's 0.20
        **_three_seeds("tofu", "forget01", "ga", {"forget_prob": [0.05, 0.06, 0.04],
                                                  "forget_rougeL_recall": [0.10, 0.11, 0.09]}),
        **_three_seeds("tofu", "forget01", "npo", {"forget_prob": [0.20, 0.21, 0.19],
                                                   "forget_rougeL_recall": [0.30, 0.31, 0.29]}),
        "tofu-forget01/retain-0.json": result("tofu", "forget01", "retain", 0, {"forget_prob": 0.15,
                                                                               "forget_rougeL_recall": 0.02}),
    }
    return write(tmp_path, results, quiet(results))


def test_the_bootstrapped_leaderboard_regenerates_byte_for_byte(ranked, tmp_path):
    first = build_leaderboard(ranked, tmp_path / "first")
    second = build_leaderboard(ranked, tmp_path / "second")
    assert [p.name for p in first.files] == ["leaderboard.md"]  # plots: test_leaderboard.py
    for a, b in zip(first.files, second.files):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_the_best_follows_each_columns_direction(ranked):
    tables = {t.benchmark: t for t in aggregate(load_results(ranked)[0])}
    rwku, tofu = tables["rwku"].best, tables["tofu"].best
    assert rwku["mia_auroc"] == ["npo"]  # |0.52 - 0.5| < |0.40 - 0.5|: lower is not better
    assert rwku["mia_rm"] == ["npo"]  # |1.9 - 2.0| < |2.5 - 2.0|
    assert rwku["forget_all"] == ["ga"] and rwku["mia_fm"] == ["ga"]
    assert tofu["forget_prob"] == ["npo"]  # |0.20 - 0.15| < |0.05 - 0.15|
    assert tofu["forget_rougeL_recall"] == ["ga"]  # lower; retain's 0.02 is a reference, never bold
    markdown = render_markdown(list(tables.values()), [])
    assert table_rows(markdown, "Forget All")["npo"]["MIA AUROC"] == "**0.5200 ± 0.010 (q 0.0)**"
    assert table_rows(markdown, "Forget All")["ga"]["MIA AUROC"] == "0.4000 ± 0.010 (q 0.0)"
    assert "Closest to 0.5 is better: MIA AUROC, MIA AUROC-zlib, MIA AUROC-MinK." in markdown
    assert "Closest to the retain row is better: Forget Prob." in markdown
    assert "an attack's advantage is |AUROC - 0.5|" in markdown  # the plug-in's reason, in the notes


# ---- the bootstrap over questions -------------------------------------------------------------------

def test_the_bootstrap_se_of_a_mean_has_the_known_answer_and_is_deterministic():
    one_right_of_ten = [1.0] + [0.0] * 9
    # the ideal bootstrap SE of a mean is sqrt(sum((x - mean)^2)) / n = sqrt(0.9) / 10 = 0.0949
    expected = math.sqrt(0.9) / 10
    se = bootstrap_se_of_mean(one_right_of_ten)
    assert se == pytest.approx(expected, rel=0.05)
    assert bootstrap_se_of_mean(one_right_of_ten) == se  # seeded: the same value every time
    assert bootstrap_se_of_mean([0.3] * 7) == 0.0
    assert bootstrap_se_of_mean([0.3]) is None  # one doc: nothing to resample


def test_the_bootstrap_of_a_statistic_resamples_each_stratum_on_its_own():
    from lm_eval_tasks.rwku.utils import loss_auroc

    auroc = DocStatistic(strata=(("fm",), ("rm",)), compute=lambda v: loss_auroc(list(v["fm"]), list(v["rm"])))
    # FM losses all below RM losses: every resample keeps both sets whole, so its AUROC is always 1
    assert bootstrap_se({"fm": [1.0, 2.0, 3.0], "rm": [4.0, 5.0, 6.0]}, auroc) == 0.0
    mixed = {"fm": [1.0, 5.0, 3.0, 2.5], "rm": [4.0, 2.0, 6.0, 3.5]}
    se = bootstrap_se(mixed, auroc)
    assert 0 < se < 0.5 and bootstrap_se(mixed, auroc) == se
    assert bootstrap_se({"fm": [1.0, 2.0]}, auroc) is None  # an input missing
    # TOFU's model utility: one subset's lists are resampled together, so they must be aligned
    utility = get_benchmark("tofu").doc_statistics["model_utility"]
    constant = {key: [0.5] * 4 for stratum in utility.strata for key in stratum}
    assert bootstrap_se(constant, utility) == 0.0
    assert bootstrap_se({**constant, "retain_prob": [0.5] * 3}, utility) is None


def test_forget_quality_is_bootstrapped_over_the_forget_questions_of_both_runs(tmp_path):
    import random

    from ulmr.metrics import forget_quality

    rng = random.Random(0)
    run, retain = [rng.random() for _ in range(30)], [rng.random() + 0.2 for _ in range(30)]
    statistic = get_benchmark("tofu").doc_statistics["forget_quality"]
    # the p-value from the cached KS statistic is the KS test's own
    assert statistic.compute({"forget_truth_ratio_r": run, "reference_truth_ratio_r": retain}) == pytest.approx(
        forget_quality(run, retain), rel=1e-12)
    results = {f"t/{method}-{seed}.json": result("tofu", "forget01", method, seed, {}, per_question={
        "forget_truth_ratio": ratios}) for method, seed, ratios in
        [("retain", 0, retain), ("ga", 0, run), ("ga", 1, run[::-1]), ("npo", 0, retain[:15] + run[15:])]}
    rows = {row.method: row for row in aggregate(load_results(write(tmp_path, results))[0])[0].rows}
    assert rows["retain"].cells["forget_quality"].question_se == 0.0  # itself, on the same questions
    assert rows["ga"].cells["forget_quality"].question_se > 0 and rows["ga"].cells["forget_quality"].complete
    assert not rows["npo"].cells["forget_quality"].complete  # one seed


def _rwku_samples(utility_right: int) -> list[dict]:
    """A run's per-doc records: 10 questions per utility set, `utility_right` of the Rea ones right."""
    records = [{"task": "rwku_utility_rea", "doc_id": i, "exact_match": float(i < utility_right)} for i in range(10)]
    for task, metric in (("rwku_utility_gen", "acc"), ("rwku_utility_tru", "acc"), ("rwku_utility_fac", "f1")):
        records += [{"task": task, "doc_id": i, metric: float(i % 2)} for i in range(10)]
    records += [{"task": "rwku_forget_fb", "doc_id": i, "rougeL_recall": v} for i, v in enumerate([0.0, 0.5, 1.0])]
    records += [{"task": "rwku_forget_qa", "doc_id": i, "rougeL_recall": v} for i, v in enumerate([0.25, 0.75])]
    records += [{"task": "rwku_forget_aa", "doc_id": 0, "rougeL_recall": 0.0}]
    records += [{"task": "rwku_mia", "doc_id": i, "fm_loss": [s, x], "fm_zlib": [s, x / 100]}
                for i, (s, x) in enumerate([("FM", 3.0), ("RM", 2.0), ("FM", 2.5), ("RM", 2.8), ("FM", 3.2),
                                            ("RM", 2.1)])]
    return records


def test_per_question_errors_come_from_the_samples_stored_beside_each_result(tmp_path):
    metrics = {"utility_gen": 0.5, "utility_rea": 0.1, "utility_tru": 0.5, "utility_fac": 0.5, "forget_all": 5 / 12,
               "mia_auroc": 1 / 9, "mia_auroc_mink": 0.5}
    root = write(tmp_path, {"rwku-1/ga-0.json": result("rwku", "1", "ga", 0, metrics)},
                 samples={"rwku-1/ga-0.json": _rwku_samples(utility_right=1)})
    results, skipped = load_results(root)
    assert not skipped  # the samples file is not taken for a result
    table = aggregate(results)[0]
    cells = table.rows[0].cells
    # RWKU's utility cells come from 10 questions: one question is 0.1, and the error says so
    assert cells["utility_rea"].question_se == bootstrap_se_of_mean([1.0] + [0.0] * 9)
    assert cells["utility_rea"].question_se == pytest.approx(0.095, abs=0.005)
    # forget All pools the FB, QA and AA docs, as lm-eval's group does
    assert cells["forget_all"].question_se == bootstrap_se_of_mean([0.0, 0.5, 1.0, 0.25, 0.75, 0.0])
    # the utility mean is its four sets' mean, each resampled on its own
    assert cells["utility_mean"].mean == pytest.approx(0.4)
    assert 0 < cells["utility_mean"].question_se < cells["utility_rea"].question_se
    # the AUROC of FM against RM losses, FM and RM texts resampled apart; Min-K% has no per-doc values
    assert 0 < cells["mia_auroc"].question_se < 0.5 and cells["mia_auroc_mink"].question_se is None
    assert table.error_sources == {"bootstrap": 1}
    markdown = render_markdown([table], [])
    assert f"0.1000 (q {cells['utility_rea'].question_se:#.2g})" in markdown
    assert "1 run(s) by the bootstrap over their stored samples" in markdown


def test_gzipped_samples_give_the_same_errors_as_plain_ones(tmp_path):
    """The committed board keeps its samples gzipped (`<samples_file>.gz`), to keep the repository small."""
    metrics = {"utility_rea": 0.1, "forget_all": 5 / 12, "mia_auroc": 1 / 9}
    plain, zipped = tmp_path / "plain", tmp_path / "zipped"
    for root in (plain, zipped):
        write(root, {"rwku-1/ga-0.json": result("rwku", "1", "ga", 0, metrics)},
              samples={"rwku-1/ga-0.json": _rwku_samples(utility_right=1)})
    samples = zipped / "rwku-1" / "ga-0.samples.jsonl"
    with gzip.open(samples.with_name(samples.name + ".gz"), "wt", encoding="utf-8") as out:
        out.write(samples.read_text())
    samples.unlink()
    cells = [aggregate(load_results(root)[0])[0].rows[0].cells for root in (plain, zipped)]
    assert cells[1]["utility_rea"].question_se is not None
    assert all(cells[0][key].question_se == cells[1][key].question_se for key in metrics)
    # a truncated archive is no samples (stored errors are used), not a crash
    gzipped = samples.with_name(samples.name + ".gz")
    gzipped.write_bytes(gzipped.read_bytes()[:20])
    assert aggregate(load_results(zipped)[0])[0].error_sources.get("bootstrap") is None


def test_without_samples_the_stored_lm_eval_errors_are_used_and_said_so(tmp_path):
    stored = {"rwku_utility_rea": {"exact_match,none": 0.1, "exact_match_stderr,none": 0.1},
              "rwku_mia": {"auroc,none": 0.5, "auroc_stderr,none": "N/A"}}
    root = write(tmp_path, {"rwku-1/ga-0.json": result("rwku", "1", "ga", 0, {"utility_rea": 0.1, "mia_auroc": 0.5},
                                                       lm_eval_results=stored)})
    table = aggregate(load_results(root)[0])[0]
    cells = table.rows[0].cells
    assert cells["utility_rea"].question_se == 0.1 and cells["mia_auroc"].question_se is None
    markdown = render_markdown([table], [])
    assert "1 run(s) from lm-eval's stored standard error of the mean" in markdown
    assert "No q for MIA AUROC" in markdown


# ---- bolding -----------------------------------------------------------------------------------------

def test_the_best_is_bold_only_when_separated_from_every_other_method():
    def cells(**means_and_errors):
        return {m: Cell(mean, None, None, se, complete=se is not None) for m, (mean, se) in means_and_errors.items()}

    # 0.30 ± 1.96 × 0.05 overlaps 0.35 ± 1.96 × 0.05: the best is not separated, no bold
    assert separated_best(LOWER, None, cells(ga=(0.30, 0.05), npo=(0.35, 0.05))) is None
    assert separated_best(LOWER, None, cells(ga=(0.30, 0.01), npo=(0.35, 0.01))) == "ga"
    assert separated_best(HIGHER, None, cells(ga=(0.30, 0.01), npo=(0.35, 0.01))) == "npo"
    # separated from the runner-up is not enough: a far but uncertain third overlaps too
    assert separated_best(LOWER, None, cells(ga=(0.30, 0.01), npo=(0.35, 0.01), rt=(0.50, 0.12))) is None
    assert separated_best(LOWER, None, cells(ga=(0.30, 0.0), npo=(0.30, 0.0))) is None  # a tie
    assert separated_best(LOWER, None, cells(ga=(0.30, 0.01), npo=(0.35, None))) is None  # no SE: no claim
    # an SE of the seed term alone (no q) or of q alone (one seed) is not enough either
    partial = {"ga": Cell(0.30, 0.001, None, 0.001), "npo": Cell(0.35, 0.001, 0.0, 0.001, complete=True)}
    assert separated_best(LOWER, None, partial) is None
    # a "closest to" column compares distances: 0.52 is 0.02 from 0.5, 0.40 is 0.10 away
    assert separated_best(CLOSEST_TO_HALF, 0.5, cells(ga=(0.40, 0.01), npo=(0.52, 0.01))) == "npo"
    assert separated_best(CLOSEST_TO_HALF, 0.5, cells(ga=(0.40, 0.03), npo=(0.52, 0.03))) is None


def test_a_best_mean_within_the_seed_spread_is_not_bold_in_the_markdown(tmp_path):
    results = {**_three_seeds("tofu", "forget01", "ga", {"forget_rougeL_recall": [0.20, 0.30, 0.40]}),
               **_three_seeds("tofu", "forget01", "npo", {"forget_rougeL_recall": [0.25, 0.35, 0.45]}),
               **_three_seeds("tofu", "forget01", "rt", {"forget_rougeL_recall": [0.90, 0.91, 0.89]})}
    table = aggregate(load_results(write(tmp_path, results, quiet(results)))[0])[0]
    assert table.rows[0].cells["forget_rougeL_recall"].complete  # q 0 and three seeds: the rule applies
    assert "forget_rougeL_recall" not in table.best  # ga's 0.30 is best, but npo's 0.35 is within reach
    markdown = render_markdown([table], [])
    assert table_rows(markdown, "Forget quality")["ga"]["Forget ROUGE-L"] == "0.3000 ± 0.10 (q 0.0)"
    assert not any("**" in line for line in markdown.splitlines() if line.startswith("| "))


# ---- summary tables, full tables in groups, budgets ---------------------------------------------------

def test_each_benchmark_has_a_summary_table_above_its_grouped_full_table(tmp_path):
    utility = {"utility_gen": 0.2, "utility_rea": 0.1, "utility_tru": 0.3, "utility_fac": 0.0, "utility_flu": 4.0}
    results = {"rwku-1/ga-0.json": result("rwku", "1", "ga", 0, {"forget_all": 0.1, "neighbor_all": 0.2,
                                                                 "mia_auroc": 0.45, **utility}),
               "tofu-forget01/ga-0.json": result("tofu", "forget01", "ga", 0, {"model_utility": 0.4,
                                                                              "forget_rougeL_recall": 0.3,
                                                                              "retain_rougeL_recall": 0.6})}
    markdown = render_markdown(aggregate(load_results(write(tmp_path, results))[0]), [])
    rwku = section(markdown, f"RWKU 1 | {MODEL}")
    assert rwku.index("**Summary**") < rwku.index("**All columns**")
    summary = table_rows(rwku, "Forget All")["ga"]
    assert list(summary) == ["Method", "Seeds", "Forget All", "Neighbor All", "MIA AUROC",
                             "Utility mean (Gen, Rea, Tru, Fac)"]
    assert summary["Utility mean (Gen, Rea, Tru, Fac)"] == "0.1500"  # (0.2 + 0.1 + 0.3 + 0.0) / 4; Flu apart
    assert [line for line in rwku.splitlines() if line.startswith("*") and not line.startswith("**")] == [
        "*Forget*", "*Neighbor*", "*MIA*", "*Utility*"]  # 21 columns as four readable tables
    tofu = section(markdown, f"TOFU forget01 | {MODEL}")
    assert list(table_rows(tofu, "Forget quality")["ga"])[2:] == ["Forget quality", "Model utility",
                                                                  "Forget ROUGE-L", "Retain ROUGE-L"]
    assert table_rows(tofu, "Forget quality")["ga"]["Model utility"] == "0.4000"


def test_the_table_of_what_each_method_optimised_shows_what_the_records_have(tmp_path):
    graddiff = {"config": {"retain_weight": 1.0, "retain_loss": "nll", "lr": 1e-4}, "steps": 13,
                "trained_tokens": 35658}
    ga = {"config": {"retain_weight": 0.0, "retain_loss": "nll", "lr": 1e-4}, "steps": 13, "trained_tokens": 18821,
          "examples_seen": {"forget": 40}, "tokens": 99999}  # tokens: through the model, prompts too; not shown
    results = {"t/graddiff-0.json": result("tofu", "forget01", "graddiff", 0, {}, unlearning=graddiff),
               "t/graddiff-1.json": result("tofu", "forget01", "graddiff", 1, {},
                                           unlearning={**graddiff, "trained_tokens": 36327}),
               "t/ga-0.json": result("tofu", "forget01", "ga", 0, {}, unlearning=ga),
               "t/before-0.json": result("tofu", "forget01", "before", 0, {})}
    markdown = render_markdown(aggregate(load_results(write(tmp_path, results))[0]), [])
    budgets = markdown.split("**What each method optimised**")[1].split("\n\n")[1].splitlines()
    assert budgets[0] == ("| Method | Retain term | Retain weight | lr | Optimizer steps | Examples seen | "
                          "Tokens trained |")
    assert budgets[2:] == ["| ga | none | 0 | 0.0001 | 13 | forget 40 | 18821 |",
                           "| graddiff | nll | 1 | 0.0001 | 13 | n/a | 35658–36327 |"]  # before: no row


def test_the_notes_say_what_the_rewriting_methods_trained_on(tmp_path):
    def ulmr(seed, summary):
        record = {"acceptance": {"summary": summary}, "config": {"rewriter": "template"}}
        return result("tofu", "forget01", "ulmr", seed, {}, unlearning=record)

    results = {"t/ulmr-0.json": ulmr(0, "80 of 80 template rewrites kept; responses: 53 bank"),
               "t/ulmr-1.json": ulmr(1, "80 of 80 template rewrites kept; responses: 53 bank"),
               "t/ulmr-2.json": ulmr(2, "80 of 80 template rewrites kept; responses: 50 bank"),
               "t/ga-0.json": result("tofu", "forget01", "ga", 0, {}, unlearning={"config": {}})}
    markdown = render_markdown(aggregate(load_results(write(tmp_path, results))[0]), [])
    line = next(line for line in markdown.splitlines() if "what the rewriting methods trained on" in line)
    assert line.endswith("ulmr seed 0, 1: 80 of 80 template rewrites kept; responses: 53 bank (rewriter: template); "
                         "ulmr seed 2: 80 of 80 template rewrites kept; responses: 50 bank (rewriter: template)")


# ---- plots -------------------------------------------------------------------------------------------

def test_the_pareto_front_is_read_on_the_plots_axes_in_their_better_direction(tmp_path):
    # RWKU's plot: x = 1 - forget All (flipped: less recall is further right), y = neighbour All
    points = {"ga": (0.0, 0.0), "npo": (0.1, 0.15), "dpo": (0.15, 0.15), "rt": (0.1, 0.1), "ulmr": (0.2, 0.3),
              "undial": (0.1, 0.15), "before": (0.0, 1.0)}  # npo and undial tie: neither dominates the other
    results = {f"rwku-1/{method}-0.json": result("rwku", "1", method, 0, {"forget_all": f, "neighbor_all": n})
               for method, (f, n) in points.items()}
    table = aggregate(load_results(write(tmp_path, results))[0])[0]
    # before (a reference row) would dominate everything on neighbours; it is not a candidate
    assert pareto_front(table) == ["ga", "npo", "ulmr", "undial"]
    markdown = render_markdown([table], [])
    assert "On the plot's Pareto front (by row means, uncertainty not considered" in markdown
    assert markdown.rstrip().count("ga, npo, ulmr, undial.") == 1


def test_an_alpha_curve_in_the_results_gets_its_own_plot(tmp_path):
    curve = [{"alpha": a, "score": 1 - a / 2, "forget": a, "retain": 1 - a / 4} for a in (0.2, 0.6, 1.0)]
    results = {"t/ulmr-0.json": result("tofu", "forget01", "ulmr", 0,
                                       {"forget_rougeL_recall": 0.1, "model_utility": 0.3},
                                       unlearning={"averaging": {"alpha": 0.6, "curve": curve}}),
               "t/before-0.json": result("tofu", "forget01", "before", 0, {"forget_rougeL_recall": 0.8,
                                                                           "model_utility": 0.4})}
    built = build_leaderboard(write(tmp_path / "results", results), tmp_path / "board")
    assert [p.name for p in built.files] == ["leaderboard.md", f"tofu-forget01-{MODEL}.png",
                                             f"tofu-forget01-{MODEL}-alpha.png"]
    assert f"](tofu-forget01-{MODEL}-alpha.png)" in built.files[0].read_text()


def test_the_alpha_plot_leads_with_the_criterions_trade_off_when_the_curve_records_it(tmp_path):
    recorded = {"alpha", "forget_prob", "forget_progress", "retain_kept", "retain_refusal_rate", "score"}
    assert alpha_panels(recorded - {"alpha"}) == (True, ["score", "forget_progress", "retain_kept"])
    assert alpha_panels({"score", "forget", "retain"}) == (False, ["score", "forget", "retain"])
    curve = [{"alpha": a, "score": a * (1 - a), "forget_progress": a, "retain_kept": 1 - a,
              "retain_refusal_rate": 0.1, "forget_prob": 1 - a} for a in (0.2, 0.6, 1.0)]
    results = {"t/ga-avg-0.json": result("tofu", "forget01", "ga-avg", 0, {"forget_rougeL_recall": 0.1},
                                         unlearning={"averaging": {"alpha": 0.6, "curve": curve}})}
    built = build_leaderboard(write(tmp_path / "results", results), tmp_path / "board")
    assert (tmp_path / "board" / f"tofu-forget01-{MODEL}-alpha.png") in built.files


# ---- RWKU's per-target protocol ----------------------------------------------------------------------

def _rwku_run(selection, method, seed, forget_all, neighbor_all):
    return {f"rwku-{selection}/{method}-{seed}.json":
            result("rwku", selection, method, seed, {"forget_all": forget_all, "neighbor_all": neighbor_all})}


def test_single_target_selections_are_averaged_over_targets_and_a_batch_is_labelled(tmp_path):
    results = {**_rwku_run("1", "before", 0, 0.8, 0.5), **_rwku_run("2", "before", 0, 0.6, 0.5),
               **_rwku_run("1", "ga", 0, 0.2, 0.40), **_rwku_run("1", "ga", 1, 0.4, 0.44),
               **_rwku_run("2", "ga", 0, 0.1, 0.30), **_rwku_run("2", "ga", 1, 0.1, 0.30),
               **_rwku_run("2", "npo", 0, 0.3, 0.45),  # not run on target 1: left out of the average
               **_rwku_run("10", "before", 0, 0.7, 0.5), **_rwku_run("10", "ga", 0, 0.3, 0.35),
               **_rwku_run("1-2", "ga", 0, 0.5, 0.2)}
    tables = aggregate(load_results(write(tmp_path, results))[0])
    assert [(t.selection, t.averaged_over) for t in tables] == [
        ("1,2,10", ["1", "2", "10"]), ("1", []), ("1-2", []), ("2", []), ("10", [])]
    averaged = tables[0]
    rows = {row.method: row for row in averaged.rows}
    assert list(rows) == ["before", "ga"]
    ga = rows["ga"].cells["forget_all"]
    per_target = [0.3, 0.1, 0.3]  # each target's mean over its seeds
    assert ga.mean == pytest.approx(sum(per_target) / 3)
    assert ga.spread == pytest.approx(0.11547005, rel=1e-6)  # the standard deviation over targets
    # each target's SE: seeds [0.2, 0.4] -> 0.1414 / sqrt 2; one seed -> unknown, so the average's too
    assert ga.uncertainty is None
    markdown = render_markdown(tables, [])
    assert f"## RWKU averaged over 3 targets (1-2, 10) | {MODEL}" in markdown
    assert markdown.index("averaged over 3 targets") < markdown.index(f"## RWKU 1 | {MODEL}")
    assert f"## RWKU 1-2 (batch setting: these targets unlearned at once) | {MODEL}" in markdown
    assert "Left out (not run on every target): npo." in markdown
    assert "each target unlearned separately from the same model, RWKU's main protocol" in markdown
    assert table_rows(section(markdown, f"RWKU averaged over 3 targets (1-2, 10) | {MODEL}"),
                      "Forget All")["ga"]["targets × seeds"] == "3 × 2"
    built = build_leaderboard(tmp_path, tmp_path / "board")
    assert f"rwku-targets-averaged-{MODEL}.png" in [p.name for p in built.files]


def test_averaged_errors_combine_each_targets_as_independent(tmp_path):
    results = {**_rwku_run("1", "ga", 0, 0.2, 0.4), **_rwku_run("1", "ga", 1, 0.4, 0.4),
               **_rwku_run("2", "ga", 0, 0.1, 0.4), **_rwku_run("2", "ga", 1, 0.3, 0.4)}
    tables = aggregate(load_results(write(tmp_path, results))[0])
    per_target_se = math.sqrt(0.02) / math.sqrt(2)  # the standard deviation of two seeds 0.2 apart, / sqrt 2
    assert tables[1].rows[0].cells["forget_all"].uncertainty == pytest.approx(per_target_se)
    assert tables[0].rows[0].cells["forget_all"].uncertainty == pytest.approx(math.sqrt(2 * per_target_se ** 2) / 2)


def test_per_target_plans_one_run_per_target_and_the_full_profile_asks_for_it(tmp_path, data_dir, monkeypatch):
    from ulmr.profiles import load_profile
    from ulmr.run import BenchmarkRun, run

    rwku = get_benchmark("rwku")
    plan = rwku.plan_class(targets="1-3", per_target=True)
    assert [p.targets for p in rwku.plans_to_run(plan, str(data_dir))] == ["1", "2", "3"]
    assert rwku.plans_to_run(rwku.plan_class(targets="1-3"), str(data_dir)) == [rwku.plan_class(targets="1-3")]
    full = load_profile("full")
    assert full.plan("rwku").per_target is True and full.plan("rwku").targets == "1-100"

    folders = []
    monkeypatch.setattr(BenchmarkRun, "run_all", lambda self: folders.append(self.folder.name))
    profile = load_profile("smoke", {"benchmarks": ["rwku"], "methods": ["ga"], "rwku.targets": "2,5",
                                     "rwku.per_target": True})
    run(profile, tmp_path, data_dir=str(data_dir), echo=lambda _: None)
    assert folders == ["rwku-2", "rwku-5"]
    run(load_profile("smoke", {"benchmarks": ["rwku"], "methods": ["ga"], "rwku.targets": "2,5"}), tmp_path,
        data_dir=str(data_dir), echo=lambda _: None)
    assert folders[-1] == "rwku-2_5"

