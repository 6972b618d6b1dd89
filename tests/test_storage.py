"""ulmr.storage and ulmr.results' atomic writes: writable folders, model identities and folder
names, per-item claims that let two runs on one results directory share the work."""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ulmr.errors import UlmrError
from ulmr.results import atomic_writer, read_stored, write_json_atomic
from ulmr.storage import (check_writable, claim, claim_holder, claimed, lock_path, model_identity, model_slug,
                          try_claim, wait_claim, weights_fingerprint)

FORK = multiprocessing.get_context("fork")


# --- check_writable ------------------------------------------------------------------------------

def test_a_missing_folder_is_created_and_left_clean(tmp_path):
    folder = tmp_path / "a" / "b"
    assert check_writable(folder) == folder
    assert folder.is_dir() and list(folder.iterdir()) == []


@pytest.mark.parametrize("below", ["", "sub/deeper"])
def test_a_file_in_the_way_is_a_one_line_error_naming_it(tmp_path, below):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    with pytest.raises(UlmrError, match=rf"^--results-dir {tmp_path}/results.* is not writable \(a file is in the way "
                                        rf"at {blocker}\): pass a folder you can write to$"):
        check_writable(blocker / below if below else blocker, what="--results-dir")


def _check_as_nobody(folder: Path, queue) -> None:
    os.setgid(65534)
    os.setuid(65534)
    try:
        check_writable(folder / "sub", what="--output")
        queue.put("no error")
    except UlmrError as exc:
        queue.put(str(exc))


def test_a_folder_without_write_permission_is_a_one_line_error(tmp_path):
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir(mode=0o555)
        with pytest.raises(UlmrError, match=r"^--output .*locked/sub is not writable \(permission denied\)"):
            check_writable(folder / "sub", what="--output")
        return
    # root writes anywhere: a child process drops to nobody to meet a real permission check, in a
    # folder nobody can reach (pytest's tmp_path is owner-only)
    import tempfile

    base = Path(tempfile.mkdtemp())
    try:
        base.chmod(0o755)
        folder = base / "locked"
        folder.mkdir(mode=0o555)
        if any(not p.stat().st_mode & 0o001 for p in base.parents):
            pytest.skip("nobody cannot reach the temporary folder")
        queue = FORK.SimpleQueue()
        child = FORK.Process(target=_check_as_nobody, args=(folder, queue))
        child.start()
        child.join(30)
        assert queue.get() == (f"--output {folder}/sub is not writable (permission denied): "
                               "pass a folder you can write to")
    finally:
        shutil.rmtree(base)


def test_a_read_only_file_system_is_a_one_line_error(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
            "from ulmr.storage import check_writable\nfrom ulmr.errors import UlmrError\n"
            f"try:\n    check_writable({str(mount / 'x')!r})\nexcept UlmrError as e:\n    print(e)\n")
    script = tmp_path / "check.py"
    script.write_text(code)
    # a private mount namespace (unprivileged where user namespaces are allowed) with a read-only tmpfs
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here to mount a read-only file system")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o ro tmpfs {mount} && "
                           f"{sys.executable} {script}"], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"no read-only mount available here: {proc.stderr.strip()[:100]}")
    assert proc.stdout.strip() == (f"folder {mount}/x is not writable (read-only file system): "
                                   "pass a folder you can write to")


def test_other_os_errors_keep_their_reason(tmp_path, monkeypatch):
    import tempfile

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(UlmrError, match=r"is not writable \(no space left on the device\)"):
        check_writable(tmp_path)


# --- model identity ------------------------------------------------------------------------------

def _old_fingerprint(folder: Path) -> str:
    """prepare.py's fingerprint before it moved: the prepared-model cache keys must not change."""
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors")):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def test_fingerprint_is_unchanged_and_cached(tiny_path, monkeypatch):
    import builtins

    from ulmr import storage

    assert weights_fingerprint(tiny_path) == _old_fingerprint(Path(tiny_path))
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(f) or real_open(f, *a, **k))
    assert weights_fingerprint(tiny_path) == _old_fingerprint(Path(tiny_path))
    assert not [f for f in opened if str(f).startswith(tiny_path)]  # the second call read no file
    assert storage.weights_fingerprint("org/name") == "org/name"


def test_fingerprint_follows_a_changed_checkpoint(tmp_path, tiny_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_path, folder)
    before = weights_fingerprint(str(folder))
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert weights_fingerprint(str(folder)) != before


def test_bin_weights_count_when_there_are_no_safetensors(tmp_path):
    for name, payload in [("a", b"one"), ("b", b"two")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        (tmp_path / name / "pytorch_model.bin").write_bytes(payload)
    assert weights_fingerprint(str(tmp_path / "a")) != weights_fingerprint(str(tmp_path / "b"))


def test_identities_and_slugs(tmp_path, tiny_path, monkeypatch):
    alias = model_identity("tiny-random")
    assert alias["kind"] == "alias" and model_slug(alias) == "tiny-random"
    assert alias["source"] == str(Path(tiny_path).resolve()) and alias["weights"] == weights_fingerprint(tiny_path)
    # the alias's cached folder given as a path is the alias
    assert model_slug(model_identity(tiny_path)) == "tiny-random"

    hub = model_identity("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert hub == {"spec": "HuggingFaceTB/SmolLM2-135M-Instruct", "kind": "hub", "name": hub["spec"],
                   "source": hub["spec"], "weights": None}
    assert model_slug(hub) == "HuggingFaceTB--SmolLM2-135M-Instruct"
    assert model_slug({"kind": "alias", "name": "smollm2-135m"}) == "smollm2-135m"

    # two checkpoints both called ckpt: different folders, readable names
    for run, extra in [("a", b""), ("b", b" ")]:
        shutil.copytree(tiny_path, tmp_path / run / "ckpt")
        with open(tmp_path / run / "ckpt" / "config.json", "ab") as f:
            f.write(extra)
    a, b = (model_identity(str(tmp_path / run / "ckpt")) for run in "ab")
    assert a["kind"] == b["kind"] == "local" and a["name"] == b["name"] == "ckpt"
    assert model_slug(a) != model_slug(b)
    assert model_slug(a) == f"ckpt-{a['weights'][:8]}" and model_slug(b).startswith("ckpt-")
    weird = model_slug({"kind": "local", "name": "my model (v2)/..", "weights": "ab" * 32})
    assert weird == "my-model-v2-abababab"


def test_a_bad_model_spec_is_the_loaders_one_line_error(tmp_path):
    with pytest.raises(UlmrError, match="no config.json"):
        model_identity(str(tmp_path))


# --- claims --------------------------------------------------------------------------------------

def test_a_claim_excludes_a_second_one_until_released(tmp_path):
    result = tmp_path / "r" / "ga-seed0.json"
    with try_claim(result) as first:
        assert first.held and lock_path(result).is_file()
        assert claim_holder(result) == os.getpid()
        with try_claim(result) as second:  # the same process, another open file: refused too
            assert not second.held
    assert not lock_path(result).exists()  # released and cleaned up
    with claim(result, wait=False) as again:
        assert again.held


def _hold_then_die(result: Path, ready, how: str) -> None:
    held = try_claim(result)
    assert held.held
    ready.set()
    if how == "kill":
        os.kill(os.getpid(), 9)
    os._exit(0)  # without releasing


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_a_dead_processes_claim_blocks_nobody(tmp_path, how):
    result = tmp_path / "item.json"
    ready = FORK.Event()
    child = FORK.Process(target=_hold_then_die, args=(result, ready, how))
    child.start()
    child.join(30)
    assert ready.is_set() and lock_path(result).exists()  # the lock file stays behind...
    with try_claim(result) as mine:
        assert mine.held  # ...but the kernel dropped the lock with the process


def _worker(result: Path, log: Path, barrier, outcome) -> None:
    barrier.wait()
    did = []
    for item in claimed([result], lambda r: r, lambda r: read_stored(r, "k") is not None):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # the work: long enough for the other process to find the claim held
        write_json_atomic(item, {"key": "k", "by": os.getpid()})
        did.append(item)
    outcome.put((os.getpid(), len(did)))


def test_two_processes_claiming_one_item_do_the_work_once(tmp_path):
    result, log = tmp_path / "results" / "tofu-ga-0.json", tmp_path / "log"
    barrier, outcome = FORK.Barrier(2), FORK.SimpleQueue()
    workers = [FORK.Process(target=_worker, args=(result, log, barrier, outcome)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    done = dict(outcome.get() for _ in workers)
    assert sorted(done.values()) == [0, 1]  # one did it, the other waited and found it done
    assert log.read_text().count("\n") == 1
    assert json.loads(result.read_text())["by"] == next(pid for pid, n in done.items() if n)


def _split_worker(results: list[Path], barrier, outcome) -> None:
    barrier.wait()
    mine = []
    for item in claimed(results, lambda r: r, lambda r: r.exists()):
        time.sleep(0.3)
        write_json_atomic(item, {"by": os.getpid()})
        mine.append(item.name)
    outcome.put(mine)


def test_two_processes_share_a_list_of_items(tmp_path):
    results = [tmp_path / f"item{i}.json" for i in range(6)]
    barrier, outcome = FORK.Barrier(2), FORK.SimpleQueue()
    workers = [FORK.Process(target=_split_worker, args=(results, barrier, outcome)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    first, second = outcome.get(), outcome.get()
    assert sorted(first + second) == sorted(r.name for r in results)  # each item once
    assert first and second  # and both did some


def test_claimed_releases_on_break_and_skips_done_items(tmp_path):
    items = [tmp_path / "a.json", tmp_path / "b.json"]
    items[0].write_text("{}")
    for item in claimed(items, lambda r: r, lambda r: r.exists()):
        assert item == items[1] and not try_claim(item).held
        break
    assert try_claim(items[1]).held


def test_wait_claim_times_out_naming_the_holder(tmp_path):
    result = tmp_path / "x.json"
    with try_claim(result):
        with pytest.raises(UlmrError, match=rf"still being produced by process {os.getpid()} after 0.2s"):
            wait_claim(result, timeout=0.2, poll_s=0.05)


# --- atomic writes -------------------------------------------------------------------------------

def test_atomic_writer_replaces_whole_files_only(tmp_path):
    path = tmp_path / "samples.jsonl"
    with atomic_writer(path) as f:
        f.write("one\n")
    with pytest.raises(RuntimeError):
        with atomic_writer(path) as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "one\n" and [p.name for p in tmp_path.iterdir()] == ["samples.jsonl"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    with atomic_writer(path, "wb") as f:
        f.write(b"\x00")
    assert path.read_bytes() == b"\x00"
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_writer(path, "a"):
            pass


def test_concurrent_writers_use_distinct_temporary_files(tmp_path):
    path = tmp_path / "r.json"
    with atomic_writer(path) as a, atomic_writer(path) as b:
        assert a.name != b.name
        a.write("a")
        b.write("b")
    assert path.read_text() == "a"  # b finished first, a replaced it: whole files either way
    write_json_atomic(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_results_carry_the_revision_the_process_loaded_not_the_checkout_at_write_time(monkeypatch):
    """A commit or edit during a long run must not relabel its later results: provenance() reports
    the revision read when the process imported ulmr.results and runs no git itself."""
    from ulmr import results

    def no_git(*args, **kwargs):
        raise AssertionError(f"provenance() ran {args[0]!r}")

    monkeypatch.setattr(results.subprocess, "run", no_git)
    assert results.provenance()["git_revision"] == results.LOADED_REVISION
    assert results.LOADED_REVISION is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", results.LOADED_REVISION)


def test_recorded_commands_name_no_absolute_path_and_say_how_the_cli_was_started():
    from ulmr.results import portable_command

    here = os.getcwd()
    argv = [f"{here}/.venv/bin/ulmr-bench", "run", "--results-dir", f"{here}/runs", f"--data-dir={here}/data"]
    assert portable_command(argv) == "ulmr-bench run --results-dir runs --data-dir=data"
    assert portable_command([f"{here}/ulmr/__main__.py", "tune"]) == "python -m ulmr tune"  # `python -m ulmr`
