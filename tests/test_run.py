"""`ulmr-bench run` on the smoke profile: stored results, failures recorded, resume, clean errors."""

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest

from ulmr.run import model_folder
from ulmr.benchmarks.registry import Preparation
from ulmr.cli import main
from ulmr.profiles import load_profile
from ulmr.run import run
from ulmr.unlearning.interface import Unlearner
from ulmr.unlearning.registry import register_method


@dataclass
class _NoConfig:
    seed: int = 0


@register_method
class _Raises(Unlearner):
    """Test method: always fails."""

    name = "test-raises"
    config_class = _NoConfig

    def unlearn(self, model, tokenizer, task):
        raise RuntimeError("engineered failure\nsecond line")


@register_method
class _Interrupts(Unlearner):
    """Test method: the user presses Ctrl-C while it runs."""

    name = "test-interrupts"
    config_class = _NoConfig

    def unlearn(self, model, tokenizer, task):
        raise KeyboardInterrupt


def _smoke(methods):
    return load_profile("smoke", {"benchmarks": ["tofu"], "methods": methods})


def test_smoke_run_records_failures_resumes_and_survives_interrupts(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("ULMR_CACHE", str(tmp_path / "cache"))
    results = tmp_path / "results"
    lines = []
    summary = run(_smoke(["ga", "test-raises"]), results, data_dir=str(data_dir), echo=lines.append)
    status = {(r["method"], r["status"]) for r in summary.rows}
    assert status == {("before", "ok"), ("retain", "ok"), ("ga", "ok"), ("test-raises", "failed")}
    folder = results / model_folder("tiny-random") / "tofu-forget01"
    failed = json.loads((folder / "test-raises-seed0.json").read_text())
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: engineered failure"
    ga = json.loads((folder / "ga-seed0.json").read_text())
    assert ga["status"] == "ok" and ga["unlearning"]["steps"] == 2
    assert set(ga["metrics"]) >= {"forget_rougeL_recall", "model_utility"}
    assert (folder / "ga-seed0.samples.jsonl").is_file()
    stamp = (folder / "ga-seed0.json").stat().st_mtime_ns
    # the closing table: each computed row's stages, and the run's seconds per stage
    stages = {r["method"]: r["stages"] for r in summary.rows}
    assert stages["ga"] == {"unlearn": pytest.approx(ga["timings"]["unlearn_seconds"], abs=0.051),
                            "eval": pytest.approx(ga["timings"]["eval_seconds"], abs=0.051)}
    assert set(stages["before"]) == {"eval"} and stages["test-raises"] == {}
    assert summary.preparation_seconds > 0  # the target and retain models were trained
    assert summary.format().splitlines()[-1].startswith("stages: prepare ")

    # Ctrl-C in a later method: what is stored stays whole, nothing half-written appears
    with pytest.raises(KeyboardInterrupt):
        run(_smoke(["ga", "test-interrupts"]), results, data_dir=str(data_dir), echo=lines.append)
    assert not (folder / "test-interrupts-seed0.json").exists()
    assert not list(folder.glob(".*.tmp")) and not list(folder.glob("*.tmp"))

    # a rerun skips everything stored and redoes nothing
    summary = run(_smoke(["ga"]), results, data_dir=str(data_dir), echo=lines.append)
    assert {r["status"] for r in summary.rows} == {"stored"} and not any(r["stages"] for r in summary.rows)
    assert (folder / "ga-seed0.json").stat().st_mtime_ns == stamp

    # a change to how selection measures (SELECTION_VERSION) redoes the method rows, not the references
    with monkeypatch.context() as patched:
        patched.setattr("ulmr.run.SELECTION_VERSION", -1)
        summary = run(_smoke(["ga"]), results, data_dir=str(data_dir), echo=lines.append)
    assert {(r["method"], r["status"]) for r in summary.rows} == {
        ("before", "stored"), ("retain", "stored"), ("ga", "ok")}
    summary = run(_smoke(["ga"]), results, data_dir=str(data_dir), echo=lines.append)  # back: redone again
    assert {(r["method"], r["status"]) for r in summary.rows if r["method"] == "ga"} == {("ga", "ok")}
    ga = json.loads((folder / "ga-seed0.json").read_text())

    # another seed later: the same prepared model and reference rows, one new method row
    profile = load_profile("smoke", {"benchmarks": ["tofu"], "methods": ["ga"], "seeds": [1]})
    summary = run(profile, results, data_dir=str(data_dir), echo=lines.append)
    assert {(r["method"], r["seed"], r["status"]) for r in summary.rows} == {
        ("before", 0, "stored"), ("retain", 0, "stored"), ("ga", 1, "ok")}
    seed1 = json.loads((folder / "ga-seed1.json").read_text())
    assert seed1["preparation"]["key"] == ga["preparation"]["key"]
    assert seed1["preparation"]["weights"] == ga["preparation"]["weights"]
    assert seed1["unlearning"]["config"]["seed"] == 1

    # a cache whose target model holds other weights for the same inputs (made by other code, or
    # another machine's cache): the rows of that model are keyed by its weights, so they are redone
    from safetensors.torch import load_file, save_file

    target = next((tmp_path / "cache" / "prepared").glob("tofu-target-*")) / "model.safetensors"
    weights = {k: v * 1.01 if v.is_floating_point() else v for k, v in load_file(target).items()}
    save_file(weights, target, metadata={"format": "pt"})
    summary = run(_smoke(["ga"]), results, data_dir=str(data_dir), echo=lines.append)
    assert {(r["method"], r["status"]) for r in summary.rows} == {("before", "ok"), ("retain", "stored"), ("ga", "ok")}
    redone = json.loads((folder / "ga-seed0.json").read_text())["preparation"]
    assert redone["key"] == ga["preparation"]["key"] and redone["weights"] != ga["preparation"]["weights"]


def test_the_cli_run_writes_its_leaderboard_beside_its_results(tmp_path, data_dir, monkeypatch):
    # never into the checkout's leaderboard/: that one is rendered from leaderboard/results only
    monkeypatch.setenv("ULMR_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    main(["run", "--profile", "smoke", "--benchmarks", "tofu", "--methods", "ga", "--data-dir", str(data_dir),
          "--results-dir", "results"])
    assert (tmp_path / "results" / "leaderboard" / "leaderboard.md").is_file()
    assert not (tmp_path / "leaderboard").exists()


@pytest.mark.parametrize("argv, message", [
    (["run", "--profile", "smoke", "--methods", "no-such-method"], "unknown method 'no-such-method'"),
    (["run", "--profile", "no-such-profile"], "unknown profile 'no-such-profile'"),
    (["run", "--profile", "smoke", "--benchmarks", "mmlu"], "unknown benchmark 'mmlu'"),
    (["run", "--profile", "smoke", "--seeds", "x"], "seed 'x' is not a non-negative integer"),
    (["run", "--profile", "smoke", "--set", "tofu.no_such_field=1"], "unknown profile tofu key 'no_such_field'"),
    (["run", "--profile", "smoke", "--set", "tofu.eval.limit=abc"], "profile tofu.eval key 'limit' got 'abc'"),
    (["run", "--profile", "smoke", "--set", "tofu.eval.limit=0"], "profile tofu.eval: limit=0 is out of range"),
    (["run", "--profile", "smoke", "--set", "rwku.eval.backend=gpu"], "unknown backend 'gpu'"),
    (["run", "--profile", "smoke", "--set", "method_overrides.all.lr=-1"], "config: lr=-1.0 is out of range"),
    (["run", "--profile", "smoke", "--seeds=-1"], "seed '-1' is not a non-negative integer"),
    (["run", "--profile", "smoke", "--seeds", ""], "--seeds '' has an empty item"),
    (["run", "--profile", "smoke", "--methods", "ga,,npo"], "--methods 'ga,,npo' has an empty item"),
    (["run", "--profile", "smoke", "--seeds", "0,0"], "seeds lists 0 twice"),
    (["run", "--profile", "smoke", "--jobs", "0"], "--jobs '0' is not a positive whole number"),
    (["run", "--profile", "smoke", "--jobs", "two"], "--jobs 'two' is not a positive whole number"),
    (["tune", "--profile", "smoke", "--set", "tofu.eval.limit=0"], "profile tofu.eval: limit=0 is out of range"),
])
def test_bad_run_arguments_are_one_line_errors_before_any_work(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--results-dir", str(tmp_path / "results")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "results").exists()  # nothing was evaluated or stored


def test_a_malformed_profile_file_is_one_line_naming_it(capsys, tmp_path):
    profile = tmp_path / "mine.yaml"
    profile.write_text("model: tiny-random\nmethods: [ga\n")
    with pytest.raises(SystemExit):
        main(["run", "--profile", str(profile), "--results-dir", str(tmp_path / "results")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"profile file {profile} is not valid YAML (line" in err[0]


def test_a_failed_row_makes_the_run_exit_non_zero_with_a_summary(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("ULMR_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--profile", "smoke", "--benchmarks", "tofu", "--methods", "test-raises", "--data-dir",
              str(data_dir), "--results-dir", str(tmp_path / "results")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: 1 of 3 runs failed (test-raises seed 0 on tofu forget01: RuntimeError: "
                          "engineered failure)")
    assert (tmp_path / "results" / "leaderboard" / "leaderboard.md").is_file()  # the others still count


def test_profiles_load_and_document_their_budgets():
    for name in ("smoke", "quick", "full"):
        profile = load_profile(name)
        assert profile.methods and profile.seeds and profile.benchmarks
    quick = load_profile("quick")
    assert quick.model == "smollm2-135m" and quick.methods == ["ulmr", "ga", "npo"]
    assert load_profile("quick", {"tofu.eval.limit": 5}).plan("tofu").eval["limit"] == 5


def test_method_overrides_layer_profile_then_benchmark():
    profile = load_profile("smoke", {
        "method_overrides": {"all": {"lr": 1e-4, "k": 3}, "ga": {"epochs": 2}},
        "rwku.method_overrides": {"all": {"lr": 2e-4}, "ulmr": {"k": 1}}})
    assert profile.method_config_overrides("ga", "tofu") == {"lr": 1e-4, "epochs": 2}
    assert profile.method_config_overrides("ga", "rwku") == {"lr": 2e-4, "epochs": 2}
    assert profile.method_config_overrides("ulmr", "rwku")["k"] == 1  # "all"'s k is ULMR's too
    assert profile.method_config_overrides("ulmr", "tofu")["k"] == 3


def test_an_ablation_takes_its_parents_overrides_but_keeps_its_presets():
    profile = load_profile("smoke", {"method_overrides": {"all": {"lr": 1e-4}, "ulmr": {"k": 3, "alpha": 0.5},
                                                          "ulmr-noavg": {"epochs": 7}},
                                     "rwku.method_overrides": {"ulmr": {"max_questions": 40}}})
    noavg = profile.method_config("ulmr-noavg", "rwku", seed=0)
    assert (noavg.lr, noavg.k, noavg.max_questions, noavg.epochs) == (1e-4, 3, 40, 7)
    assert noavg.alpha == 1.0  # its preset: the parent's alpha override does not undo the ablation
    norewrite = profile.method_config("ulmr-norewrite", "tofu", seed=0)
    assert (norewrite.k, norewrite.alpha, norewrite.rewrite) == (3, 0.5, False)
    assert not hasattr(profile.method_config("ga", "tofu", seed=0), "k")


def test_gate_stops_a_run_whose_target_did_not_learn_and_stores_the_base_row(tmp_path, data_dir, monkeypatch):
    from ulmr.errors import UlmrError

    monkeypatch.setenv("ULMR_CACHE", str(tmp_path / "cache"))
    profile = load_profile("smoke", {"benchmarks": ["tofu"], "methods": ["ga"], "tofu.gate_min_rouge_gain": 2.0})
    lines = []
    for attempt in range(2):
        with pytest.raises(UlmrError, match=r"the target model does not know its forget set .* gate needs \+2.0"):
            run(profile, tmp_path / "results", data_dir=str(data_dir), echo=lines.append)
    base = json.loads((tmp_path / "results" / model_folder("tiny-random") / "tofu-forget01" / "base-seed0.json").read_text())
    assert base["method"] == "base" and base["eval"]["tasks"] == ["tofu_forget01_forget_rouge"]
    assert "forget_rougeL_recall" in base["metrics"]
    assert sum("base: stored result found" in line for line in lines) == 1  # the rerun did not re-evaluate it
    assert not (tmp_path / "results" / model_folder("tiny-random") / "tofu-forget01" / "ga-seed0.json").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"rwku.inject": True}, r"knowledge injection did not take \(forget All .*, gate needs \+2.0\)"),
    ({"rwku.inject": False, "rwku.inject_below": 2.0}, r"the base model scores forget All .* < 2.0"),
])
def test_rwku_gate_stops_a_run_without_knowledge_of_the_targets(tmp_path, data_dir, monkeypatch, overrides, message):
    from ulmr.errors import UlmrError

    monkeypatch.setenv("ULMR_CACHE", str(tmp_path / "cache"))
    profile = load_profile("smoke", {"benchmarks": ["rwku"], "methods": ["ga"], "rwku.gate_min_forget_gain": 2.0,
                                     **overrides})
    with pytest.raises(UlmrError, match=message):
        run(profile, tmp_path / "results", data_dir=str(data_dir), echo=lambda line: None)
    before = json.loads((tmp_path / "results" / model_folder("tiny-random") / "rwku-1" / "before-seed0.json").read_text())
    assert before["preparation"]["injected"] is overrides["rwku.inject"]
    assert not (tmp_path / "results" / model_folder("tiny-random") / "rwku-1" / "ga-seed0.json").exists()


def test_runs_go_seed_by_seed_so_a_stopped_run_leaves_whole_rounds(tmp_path, monkeypatch):
    from ulmr import run as run_module

    order = []
    monkeypatch.setattr(run_module.BenchmarkRun, "prepare", lambda self: Preparation(None, None))
    monkeypatch.setattr(run_module.BenchmarkRun, "run_method",
                        lambda self, method, seed, before, wait: order.append((method, seed)) or True)
    profile = load_profile("smoke", {"benchmarks": ["tofu"], "methods": ["ga", "npo", "rt"], "seeds": [0, 1]})
    run(profile, tmp_path, echo=lambda message: None)
    # and within a seed the longest rows first (npo's reference pass), equal ones in the profile's order
    assert order == [("npo", 0), ("ga", 0), ("rt", 0), ("npo", 1), ("ga", 1), ("rt", 1)]


def test_a_row_another_run_is_producing_is_done_last_and_waited_for(tmp_path, monkeypatch):
    """Two runs on one results directory: a row the other run holds is put off, not duplicated;
    after the rest this run waits for it (and then reuses what the other stored)."""
    from ulmr import run as run_module

    calls = []

    def run_method(self, method, seed, before, wait):
        calls.append((method, seed, wait))
        return wait or (method, seed) != ("ga", 0)  # ("ga", 0) is held by another run

    monkeypatch.setattr(run_module.BenchmarkRun, "prepare", lambda self: Preparation(None, None))
    monkeypatch.setattr(run_module.BenchmarkRun, "run_method", run_method)
    profile = load_profile("smoke", {"benchmarks": ["tofu"], "methods": ["ga", "npo"], "seeds": [0, 1]})
    run(profile, tmp_path, echo=lambda message: None)
    assert calls == [("npo", 0, False), ("ga", 0, False), ("npo", 1, False), ("ga", 1, False), ("ga", 0, True)]


def test_a_stored_item_held_by_another_process_is_not_recomputed(tmp_path):
    """stored_or_compute under a claim another process holds: wait=False hands the item back."""
    import multiprocessing

    from ulmr.results import stored_or_compute

    path = tmp_path / "item.json"
    ready, release = multiprocessing.Event(), multiprocessing.Event()

    def hold():
        from ulmr.storage import claim

        with claim(path):
            ready.set()
            release.wait(30)

    holder = multiprocessing.get_context("fork").Process(target=hold)
    holder.start()
    try:
        assert ready.wait(30)
        assert stored_or_compute(path, "k", lambda: {"status": "ok"}, wait=False) is None
        assert not path.exists()
    finally:
        release.set()
        holder.join(30)
    assert stored_or_compute(path, "k", lambda: {"status": "ok"})[1] is False  # now computed here
    assert stored_or_compute(path, "k", lambda: {"status": "bad"})[0]["status"] == "ok"  # and reused


def test_models_whose_folders_share_a_name_get_separate_results(tmp_path, tiny_path):
    """Results are kept apart by what a model is, not by its folder's last name."""
    import shutil

    from safetensors.torch import load_file, save_file

    first, second, same = tmp_path / "a" / "ckpt", tmp_path / "b" / "ckpt", tmp_path / "c" / "ckpt"
    for folder in (first, second, same):
        shutil.copytree(tiny_path, folder)
    weights = load_file(second / "model.safetensors")
    weights = {name: tensor + 1 if tensor.is_floating_point() else tensor for name, tensor in weights.items()}
    save_file(weights, second / "model.safetensors", metadata={"format": "pt"})
    assert model_folder(str(first)) != model_folder(str(second))
    assert model_folder(str(first)) == model_folder(str(same))  # the same weights: the same entry
    assert model_folder(str(first)).startswith("ckpt-")


def test_jobs_split_the_rows_between_processes_and_merge_their_summaries(tmp_path, data_dir, monkeypatch, capfd):
    """--jobs 2: one process prepares every benchmark's models first, then two processes, each
    starting on another benchmark, share one results directory; every row is produced once, and
    recorded with the user's command."""
    monkeypatch.setenv("ULMR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["ulmr-bench", "run", "--jobs", "2"])
    main(["run", "--profile", "smoke", "--methods", "ga", "--seeds", "0,1", "--jobs", "2", "--data-dir",
          str(data_dir), "--results-dir", str(tmp_path / "results")])
    out = capfd.readouterr().out
    assert "then 2 processes of" in out
    # the models first, each benchmark's once, before any row is evaluated
    trained = [out.index(f"[{benchmark}] models prepared in") for benchmark in ("tofu forget01", "rwku 1")]
    assert all(out.count(f"[{benchmark}] models prepared in") == 1 for benchmark in ("tofu forget01", "rwku 1"))
    assert max(trained) < out.index("before: evaluating"), out
    for benchmark in ("tofu forget01", "rwku 1"):  # each row computed by one process only
        for seed in (0, 1):
            assert out.count(f"[{benchmark}] ga seed {seed}: unlearning") == 1, out
        assert out.count(f"[{benchmark}] before: evaluating") == 1
    merged = out[out.index("the models and 2 processes finished"):]
    table = merged[:merged.index("\nstages: ")].splitlines()[2:]  # the merged summary's rows
    # tofu: before, retain, ga x 2; rwku (injected on the profile's say, no base row): before, ga x 2
    assert len(table) == 7 and all(" ok " in line for line in table), table
    results = sorted((tmp_path / "results").glob("*/*/*-seed*.json"))
    assert len(results) == 7
    for path in results:
        record = json.loads(path.read_text())
        assert record["status"] == "ok" and record["provenance"]["command"] == "ulmr-bench run --jobs 2", path
    assert (tmp_path / "results" / "leaderboard" / "leaderboard.md").is_file()


def test_run_summaries_merge_each_row_as_the_process_that_computed_it_saw_it():
    from ulmr.run import RunSummary

    def row(method, status, seconds):
        return {"benchmark": "tofu", "selection": "forget01", "method": method, "seed": 0, "status": status,
                "seconds": seconds, "error": None, "stages": {"eval": seconds} if status == "ok" else {}}

    first = {"rows": [row("before", "ok", 5.0), row("ga", "stored", 9.0)], "preparation_seconds": 3.0}
    second = {"rows": [row("before", "stored", 1.0), row("ga", "ok", 8.0)], "preparation_seconds": 0.5}
    merged = RunSummary.merged([first, second])
    assert [(r["method"], r["status"], r["seconds"]) for r in merged.rows] == [("before", "ok", 5.0), ("ga", "ok", 8.0)]
    assert merged.preparation_seconds == 3.5


def test_a_run_process_that_stops_early_stops_the_run_with_one_line(tmp_path):
    """The models process or a row process exiting non-zero (or without its summary) is one error
    naming it; the processes started with it are waited for, and their summaries read otherwise."""
    from ulmr.cli.run import _finished
    from ulmr.errors import UlmrError

    def process(code: int, summary, writes: bool):
        text = f"open({str(summary)!r}, 'w').write('{{}}')" if writes else "pass"
        return subprocess.Popen([sys.executable, "-c", f"{text}; raise SystemExit({code})"]), summary

    ok, failed = tmp_path / "ok.json", tmp_path / "failed.json"
    with pytest.raises(UlmrError, match=r"^the process preparing the models stopped early \(exit code 3"):
        _finished([process(3, failed, writes=False)], "process preparing the models")
    with pytest.raises(UlmrError, match=r"^1 of 2 run processes stopped early \(exit code 0"):
        _finished([process(0, ok, writes=True), process(0, failed, writes=False)], "run processes")
    assert _finished([process(0, ok, writes=True)], "run processes") == [{}]


def test_auto_jobs_give_each_benchmark_a_core_on_a_cpu(monkeypatch):
    from ulmr.cli import run as run_cli

    monkeypatch.setattr(run_cli, "cpu_cores", lambda: 2)
    assert run_cli.job_count("auto", 2) == 2 and run_cli.job_count("auto", 1) == 1
    monkeypatch.setattr(run_cli, "cpu_cores", lambda: 1)
    assert run_cli.job_count("auto", 2) == 1
    assert run_cli.job_count("3", 1) == 3  # asked for: as many as asked


def test_progress_line_estimates_from_the_rows_computed():
    from ulmr.run import progress_line

    assert progress_line(1, 4, []) == "1/4 done"  # a stored row: nothing to estimate from
    assert progress_line(2, 4, [60.0, 180.0]) == "2/4 done; about 4 min left at this run's pace (mean 2.0 min a row computed)"
    assert progress_line(4, 4, [60.0]) == "4/4 done"


def test_the_command_line_bounds_the_cpu_primitive_caches_unless_the_user_set_them(monkeypatch, capsys):
    """ideep's and oneDNN's per-shape caches (1,024 entries each) grew a run by ~0.2 GiB a row."""
    import os

    environment = {k: v for k, v in os.environ.items() if k != "LRU_CACHE_CAPACITY"}
    environment["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = "512"  # the user's own choice
    monkeypatch.setattr(os, "environ", environment)
    main(["--help"])
    assert environment["LRU_CACHE_CAPACITY"] == "64"
    assert environment["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"
    assert "Usage" in capsys.readouterr().out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim; a no-op elsewhere")
def test_released_memory_hands_a_finished_stages_heap_back_to_the_os():
    """A TOFU evaluation left 1.85 GB resident that only trimming gave back; each run stage now starts
    without its predecessor's freed heap."""
    script = textwrap.dedent("""
        import ctypes
        from ulmr.hardware import release_freed_memory
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: blocks from the heap, as once glibc's threshold adapted
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: free() alone never gives pages back
        def anonymous_mb():
            line = next(l for l in open("/proc/self/status") if l.startswith("RssAnon"))
            return int(line.split()[1]) // 1024
        blocks = [bytes([i % 256]) * (1 << 20) for i in range(300)]
        pin = bytes(2048)  # a live block above them keeps the heap's top in use
        del blocks
        freed = anonymous_mb()
        release_freed_memory()
        print(freed, anonymous_mb())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    freed, released = map(int, out.split())
    assert freed - released > 250, (freed, released)
