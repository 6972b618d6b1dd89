"""Data-parallel unlearning and evaluation under `accelerate launch`, two CPU processes (about 30 s
each here).

Note: `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate's simple launcher
ignores --num_processes on CPU unless given an mpirun hostfile). Two CPU processes come from
`--multi_gpu --num_processes 2` (torchrun underneath) with the Accelerator created with cpu=True,
which `ulmr-bench unlearn --device cpu` does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _launch_ulmr(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    """`ulmr-bench ARGS` under `accelerate launch` with `processes` CPU processes (1: no launcher)."""
    launcher = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port())] if processes > 1 else []
    return subprocess.run([sys.executable, *launcher, "-m", "ulmr", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)


def _launch(out: Path, data_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return _launch_ulmr("unlearn", "--method", "ga", "--model", "tiny-random", "--benchmark", "tofu",
                        "--data-dir", str(data_dir), "--output", str(out), "--set", "max_steps=2",
                        "--set", "batch_size=2", "--set", "grad_accum=1", *extra)


def test_two_processes_train_on_disjoint_shards_and_save_one_checkpoint(tmp_path, data_dir, tiny_path):
    import torch

    from ulmr.models import load_model

    out = tmp_path / "unlearned"
    proc = _launch(out, data_dir, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "unlearn.json").read_text())
    # 2 steps x 1 micro-batch x 2 items on each process: 4 distinct items each, none on both
    assert record["steps"] == 2 and record["forget_items_per_process"] == [4, 4]
    assert record["forget_items_shared"] == 0
    assert proc.stdout.count("checkpoint:") == 1  # written by the main process only
    model, _ = load_model(str(out), dtype="fp32", device="cpu")
    original, _ = load_model(tiny_path, dtype="fp32", device="cpu")
    assert not torch.equal(model.lm_head.weight, original.lm_head.weight)
    assert not [p for p in tmp_path.iterdir() if p.name != "unlearned"]  # no temporary folder left


def test_processes_that_do_not_form_a_group_never_train_alone(tmp_path, data_dir):
    """Without --device cpu on a machine without GPUs, accelerate used to make each process its own
    single-process run: both trained on all the data and wrote the same checkpoint. Now that stops
    with a one-line error (or, once the CLI creates its Accelerator with cpu=True by itself, it is a
    proper two-process run)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a machine with GPUs forms the group on them")
    out = tmp_path / "unlearned"
    proc = _launch(out, data_dir)
    if proc.returncode == 0:
        assert json.loads((out / "unlearn.json").read_text())["forget_items_per_process"] == [4, 4]
        return
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors and all("2 processes were launched but accelerate set up 1 per run" in e for e in errors)
    assert not out.exists()


@pytest.mark.parametrize("backend", ["fast", "hf"])
def test_evaluation_sharded_across_two_processes_equals_one_process(tmp_path, data_dir, tiny_path, backend):
    """lm-eval's evaluator gives each process every other doc and gathers them on the first: the
    gathered result is the single process's (same greedy answers, metrics to fp32 rounding)."""
    results = {}
    for processes in (1, 2):
        out = tmp_path / f"{processes}.json"
        proc = _launch_ulmr("eval", "--model", "tiny-random", "--benchmark", "tofu", "--data-dir", str(data_dir),
                            "--limit", "5", "--device", "cpu", "--dtype", "fp32", "--backend", backend,
                            "--max-gen-toks", "8", "--output", str(out), processes=processes)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("results:") == 1  # written and printed by the first process only
        results[processes] = json.loads(out.read_text())
    one, two = results[1], results[2]
    assert (one["eval"]["processes"], two["eval"]["processes"]) == (1, 2)
    assert two["eval"]["n_docs"] == one["eval"]["n_docs"] and set(one["eval"]["n_docs"].values()) == {5}
    assert two["per_question"].keys() == one["per_question"].keys()
    for key, values in one["per_question"].items():
        assert two["per_question"][key] == pytest.approx(values, rel=1e-5, abs=1e-6), key
    for key, value in one["metrics"].items():
        assert two["metrics"][key] == (None if value is None else pytest.approx(value, rel=1e-5, abs=1e-6)), key
    samples = [[json.loads(line) for line in (tmp_path / f"{n}.samples.jsonl").read_text().splitlines()]
               for n in (1, 2)]
    assert [(r["doc_id"], r["filtered_resps"]) for r in samples[0] if "rouge" in r["task"]] == \
           [(r["doc_id"], r["filtered_resps"]) for r in samples[1] if "rouge" in r["task"]]
    if backend == "fast":  # the first process did about half the single process's work
        assert two["timings"]["work"]["forward_tokens"] < 0.75 * one["timings"]["work"]["forward_tokens"]


def test_the_cli_leaves_its_process_group_when_a_command_ends(tmp_path):
    """A launched command's process group is destroyed by `main` itself, not left to the interpreter's
    teardown (where one rank once aborted after writing its results)."""
    import torch.distributed as dist

    from ulmr.cli import main

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    assert dist.is_initialized()
    with pytest.raises(SystemExit):  # the error path leaves it too
        main(["eval", "--model", "tiny-random", "--backend", "no-such-backend"])
    assert not dist.is_initialized()
