"""Bad inputs replayed through the real command line: each must stop before any work with exit code
!= 0, exactly one stderr line "error: ..." naming the problem, no traceback and no partial output.

Cases run in-process through `ulmr.cli.main` (fast) unless marked "subprocess" (`python -m ulmr`,
the real process boundary). The expensive work (model preparation, evaluation, training) is
replaced by a tripwire: a case that reaches it fails with WorkStarted instead of running for
minutes.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from conftest import data_copy_with

REPO = Path(__file__).resolve().parents[1]


class WorkStarted(BaseException):
    """Raised by the tripwires: real work began before the bad input was rejected (a BaseException
    so that `run`'s per-method `except Exception` cannot record it as a failed row and go on)."""


@dataclass
class Ctx:
    tmp: Path
    data: Path

    @property
    def out(self) -> Path:  # where each case's output would go
        return self.tmp / "out"

    def corrupted(self, relative: str, content: bytes) -> Path:
        return data_copy_with(self.data, self.tmp / "data", relative, content)

    def file(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path


@dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]
    message: str  # regex searched in the one stderr line
    subprocess: bool = False


def unlearn(*extra: str, data: Callable[[Ctx], Path] | None = None, output: Callable[[Ctx], Path] | None = None):
    def argv(ctx: Ctx) -> list[str]:
        return ["unlearn", "--method", "ga", "--model", "tiny-random", "--set", "max_steps=1",
                "--data-dir", str(data(ctx) if data else ctx.data),
                "--output", str(output(ctx) if output else ctx.out), *extra]
    return argv


def run(*extra: str | Callable[[Ctx], str], results: Callable[[Ctx], Path] | None = None):
    def argv(ctx: Ctx) -> list[str]:
        return ["run", "--profile", "smoke", "--model", "tiny-random", "--benchmarks", "tofu", "--methods", "ga",
                "--data-dir", str(ctx.data), "--results-dir", str(results(ctx) if results else ctx.out),
                *(e(ctx) if callable(e) else e for e in extra)]
    return argv


def _random_bytes(n: int = 4096) -> bytes:
    return bytes((i * 7919 + 13) % 256 for i in range(n))  # fixed "random" bytes, invalid UTF-8


def _truncated(ctx: Ctx, relative: str) -> bytes:
    data = (ctx.data / relative).read_bytes()
    return data[: len(data) // 2]


KING_POSITIVE = "rwku/Target/1_Stephen_King/positive.json.gz"

CASES = [
    # --- fixed: numbers that are not finite or out of range -------------------------------------
    Case("lr-inf-subprocess", unlearn("--set", "lr=.inf"),
         r"^error: ga config: lr=inf is out of range: it must be a finite number in \(0, inf\)$", subprocess=True),
    Case("lr-nan", unlearn("--set", "lr=.nan"), r"^error: ga config: lr=nan is out of range: it must be a finite number"),
    Case("lr-minus-inf", unlearn("--set", "lr=-.inf"), r"^error: ga config: lr=-inf is out of range"),
    Case("warmup-nan", unlearn("--set", "warmup_ratio=nan"), r"^error: ga config: warmup_ratio=nan is out of range: .*\[0, 1\]"),
    Case("lr-not-a-number", unlearn("--set", "lr=fast"), r"^error: ga config key 'lr' got 'fast': expected float"),
    Case("max-steps-zero", unlearn("--set", "max_steps=0"), r"^error: ga config: max_steps=0 is out of range"),
    Case("negative-seed", unlearn("--set", "seed=-1"),
         r"^error: ga config: seed=-1 is out of range: it must lie in \[0, 4294967295\]"),
    # --- fixed: unreadable data files -------------------------------------------------------------
    Case("tofu-random-bytes-subprocess",
         unlearn(data=lambda ctx: ctx.corrupted("tofu/forget01.json", _random_bytes())),
         r"^error: data file .*/tofu/forget01\.json is not UTF-8 text \(bad byte at offset \d+\): restore it",
         subprocess=True),
    Case("tofu-malformed-json-line",
         unlearn(data=lambda ctx: ctx.corrupted("tofu/retain99.json",
                                                b'{"question": "q", "answer": "a"}\n{"question": \n')),
         r"^error: data file .*/tofu/retain99\.json is not valid JSON \(line 2\): restore it"),
    Case("tofu-refusals-not-utf8",
         unlearn(data=lambda ctx: ctx.corrupted("tofu/idontknow.jsonl", b"I don't know\n\xff\n")),
         r"^error: data file .*/tofu/idontknow\.jsonl is not UTF-8 text"),
    Case("rwku-truncated-gz",
         unlearn("--benchmark", "rwku", "--targets", "1",
                 data=lambda ctx: ctx.corrupted(KING_POSITIVE, _truncated(ctx, KING_POSITIVE))),
         r"^error: data file .*/positive\.json\.gz is truncated \(its gzip stream ends early\): restore it"),
    Case("rwku-not-gzip",
         unlearn("--benchmark", "rwku", "--targets", "1",
                 data=lambda ctx: ctx.corrupted(KING_POSITIVE, b'[{"text": "plain, not gzip"}]')),
         r"^error: data file .*/positive\.json\.gz is not gzip data despite its \.gz name"),
    Case("rwku-malformed-json-in-gz",
         unlearn("--benchmark", "rwku", "--targets", "1",
                 data=lambda ctx: ctx.corrupted(KING_POSITIVE, gzip.compress(b'{"text": "a"}\n{"text": "b"\n'))),
         r"^error: data file .*/positive\.json\.gz is not valid JSON \(line 2\)"),
    # --- already one line before this work (kept so they stay so) -------------------------------
    Case("missing-data-dir", unlearn(data=lambda ctx: ctx.tmp / "nowhere"),
         r"^error: data directory .*nowhere does not exist"),
    Case("malformed-config-file", lambda ctx: unlearn("--config", str(ctx.file("c.yaml", "lr: [1,\n")))(ctx),
         r"^error: config file .*c\.yaml is not valid YAML"),
    Case("run-seed-not-integer", run("--seeds", "x"), r"^error: seed 'x' is not a non-negative integer"),
    # --- the run plan, validated whole before any model loads; output folders checked first -------
    Case("run-eval-limit-not-a-number", run("--set", "tofu.eval.limit=abc"), r"^error: .*limit.*abc"),
    Case("run-malformed-profile-yaml", run("--profile", lambda ctx: str(ctx.file("p.yaml", "model: [tiny\n"))),
         r"^error: profile file .*p\.yaml is not valid YAML"),
    Case("run-eval-limit-zero", run("--set", "tofu.eval.limit=0"), r"^error: .*limit=0 is out of range"),
    Case("run-negative-lr-override", run("--set", "method_overrides.all.lr=-1"),
         r"^error: .*lr=-1(\.0)? is out of range"),
    Case("run-negative-seed", run("--seeds=-1"), r"^error: .*seed.*-1"),
    Case("run-empty-method-name", run("--methods", "ga,,npo"), r"^error: .*--methods"),
    Case("run-empty-seeds", run("--seeds", ""), r"^error: .*--seeds"),
    Case("run-results-dir-under-a-file", run(results=lambda ctx: Path(ctx.file("f", "x")) / "results"),
         r"^error: --results-dir .* is not writable \(a file is in the way at .*/f\)"),
    Case("unlearn-output-under-a-file", unlearn(output=lambda ctx: Path(ctx.file("f", "x")) / "ckpt"),
         r"^error: --output .* is not writable \(a file is in the way at .*/f\)"),
]


@pytest.fixture()
def tripwires(monkeypatch):
    def refuse(*args, **kwargs):
        raise WorkStarted("work started before the bad input was rejected")

    for target in ("ulmr.prepare.prepare_tofu", "ulmr.prepare.prepare_rwku", "ulmr.run.evaluate",
                   "ulmr.evaluation.evaluate", "ulmr.unlearning.training.train"):
        monkeypatch.setattr(target, refuse, raising=False)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input_is_one_line_before_any_work(case, tmp_path, data_dir, tripwires, capsys):
    ctx = Ctx(tmp_path, data_dir)
    argv = case.argv(ctx)
    if case.subprocess:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run([sys.executable, "-m", "ulmr", *argv], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        code, stderr = proc.returncode, proc.stderr
    else:
        from ulmr.cli import main

        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        code, stderr = exit_info.value.code, capsys.readouterr().err
    assert code not in (0, None), stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert re.search(case.message, lines[0]), lines[0]
    written = [p for p in ctx.out.rglob("*") if p.is_file()] if ctx.out.exists() else []
    assert not written, f"partial output: {written}"


def test_a_diverged_run_writes_no_checkpoint(tmp_path, data_dir, capsys):
    """Training itself diverges (weights overflow in the only step): the last stderr line is the
    one-line error, after the progress lines, and no checkpoint is written."""
    from ulmr.cli import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["unlearn", "--method", "ga", "--model", "tiny-random", "--data-dir", str(data_dir), "--output", str(out),
              "--set", "max_steps=1", "--set", "lr=1e20", "--set", "weight_decay=1e20", "--set", "batch_size=2",
              "--set", "grad_accum=1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: training diverged at step 1/1: the weights are no longer finite"), err
    assert not out.exists()
