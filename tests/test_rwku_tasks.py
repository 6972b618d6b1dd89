"""The RWKU lm-eval tasks: prompts as RWKU builds them, MIA losses equal an independent computation
from the tiny model's logits, and `ulmr-bench eval --benchmark rwku` end to end."""

import contextlib
import io
import json
import zlib

import pytest
import torch
from lm_eval.api.model import LM
from lm_eval.models.utils import handle_stop_sequences
from rouge import Rouge

from lm_eval_tasks import TASKS_PATH
from lm_eval_tasks.rwku.utils import loss_auroc, min_k_loss, mmlu_prompt, probe_prompt
from ulmr.benchmarks.rwku import TABLE, min_k_metrics
from ulmr.cli import main

FORGET_TEXTS = ["Ada Lovelace wrote the first program.", "She worked with Charles Babbage on the Engine."]
RETAIN_TEXTS = ["Alan Turing broke codes.", "The Analytical Engine was never built.", "Paris is in France."]


def _tag(message):
    return f"<u>{message}</u>"


@pytest.mark.parametrize("level, kind, expected", [
    ("1", "cloze", "<u>Please complete the blank in the following question.\nQuestion: Q ___\n</u>Answer:"),
    ("2", "simple question", "<u>Please briefly answer the following question.\nQuestion: Q ___\n</u>Answer:"),
    ("3", "role play", "<u>Please briefly answer the following question.\nQuestion: Q ___\n</u>Answer:"),
    ("3", "affirmative suffix", "<u>Please briefly answer the following question.\nQuestion: Q ___</u>"),
    ("3", "incontext learning", "<u>Please briefly answer the following question.\nQ ___\n</u>Answer:"),
])
def test_probe_prompts_are_rwkus(level, kind, expected):
    assert probe_prompt({"query": "Q ___", "level": level, "type": kind}, _tag) == expected


def test_mmlu_prompt_is_rwkus():
    row = {"task": "high_school_physics", "question": "Q?", "choices": ["w", "x", "y", "z"],
           "examples": [{"question": "E?", "choices": ["a", "b", "c", "d"], "answer": 2}]}
    assert mmlu_prompt(row, _tag) == (
        "<u>The following are multiple choice questions (with answers) about high school physics.\n\n"
        "Question: E?\nA. a\nB. b\nC. c\nD. d\nAnswer: C\n\n"
        "Please following the previous examples and answer the given question.\n"
        "Question: Q?\nA. w\nB. x\nC. y\nD. z</u>Answer:")


PROBE_TASKS = ["rwku_forget_fb", "rwku_forget_qa", "rwku_forget_aa", "rwku_neighbor_fb", "rwku_neighbor_qa"]


def _rwku_tasks(tiny_path, data_dir, names, **metadata):
    """The lm-eval task objects of `names` (groups expanded), by task name."""
    from lm_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=str(TASKS_PATH), include_defaults=False,
                          metadata={"tokenizer": tiny_path, "data_dir": str(data_dir), **metadata})

    def leaves(tree):
        for value in tree.values():
            yield from leaves(value) if isinstance(value, dict) else [value]

    return {task.config.task: task for task in leaves(get_task_dict(names, manager))}


@pytest.mark.parametrize("metadata, until", [({}, []), ({"probe_stop": "eos"}, []),
                                             ({"probe_stop": "newline"}, ["\n"])])
def test_probes_stop_at_a_newline_only_when_asked(tiny_path, data_dir, metadata, until):
    tasks = _rwku_tasks(tiny_path, data_dir, ["rwku_forget", "rwku_neighbor", "rwku_utility_fac"], **metadata)
    for name in PROBE_TASKS:
        assert tasks[name].config.generation_kwargs == {"until": until, "max_gen_toks": 30, "do_sample": False}
        # the requests the model receives carry the same settings
        tasks[name].build_all_requests(limit=1, rank=0, world_size=1)
        assert tasks[name].instances[0].args[1]["until"] == until
    # other generations never had a newline stop, and probe_stop leaves them alone
    assert tasks["rwku_utility_fac"].config.generation_kwargs["until"] == []


def test_unknown_probe_stop_is_refused(tiny_path, data_dir):
    with pytest.raises(Exception, match="unknown probe_stop 'nl': use eos or newline"):
        _rwku_tasks(tiny_path, data_dir, ["rwku_forget_fb"], probe_stop="nl")


class ScriptedLM(LM):
    """Answers every generation request with one text, stopped the way lm-eval's hf model and our fast
    backend stop: at the request's `until` strings plus the tokenizer's EOS text, cut at the first."""

    def __init__(self, text, eos="<|im_end|>"):
        super().__init__()
        self.text, self.eos = text, eos

    def generate_until(self, requests, disable_tqdm=False):
        texts = []
        for request in requests:
            text = self.text
            for term in handle_stop_sequences(request.args[1].get("until"), eos=self.eos):
                text = text.split(term)[0]
            texts.append(text)
        return texts

    def loglikelihood(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError


@pytest.mark.parametrize("probe_stop, kept", [(None, "Stephen King\nwrote the novel Carrie"),
                                              ("newline", "Stephen King")])
def test_a_probe_generation_continues_past_a_newline(tiny_path, data_dir, probe_stop, kept):
    import lm_eval
    from lm_eval.tasks import TaskManager

    lm = ScriptedLM("Stephen King\nwrote the novel Carrie<|im_end|>\nUser: more")
    metadata = {"tokenizer": tiny_path, "data_dir": str(data_dir)}
    if probe_stop:
        metadata["probe_stop"] = probe_stop
    manager = TaskManager(include_path=str(TASKS_PATH), include_defaults=False, metadata=metadata)
    out = lm_eval.simple_evaluate(model=lm, tasks=["rwku_forget_qa"], task_manager=manager, limit=2,
                                  log_samples=True)
    samples = out["samples"]["rwku_forget_qa"]
    assert [s["filtered_resps"][0] for s in samples] == [kept, kept]
    for s in samples:  # scored on what was kept, the newline collapsing as in the `rouge` package
        expected = Rouge().get_scores(kept, s["doc"]["reference"])[0]["rouge-l"]["r"]
        assert s["rougeL_recall"] == pytest.approx(expected)


def _mia_data_dir(root):
    folder = root / "rwku" / "Target" / "1_Ada_Lovelace"
    folder.mkdir(parents=True)
    (root / "rwku" / "targets.tsv").write_text("idx\tdir\ttarget\tintro\n1\t1_Ada_Lovelace\tAda Lovelace\tx\n")
    for name, texts in (("forget_mia", FORGET_TEXTS), ("retain_mia", RETAIN_TEXTS)):
        (folder / f"{name}.json").write_text(json.dumps([{"text": t, "subject": "Ada Lovelace"} for t in texts]))
    return root


def _token_logprobs(model, tokenizer, text):
    """Independently: every token of the text after the BOS (prefix) token; one forward pass."""
    ids = [tokenizer.bos_token_id] + tokenizer.encode(text)
    with torch.no_grad():
        logprobs = model(torch.tensor([ids[:-1]])).logits[0].double().log_softmax(-1)
    return [logprobs[i, token].item() for i, token in enumerate(ids[1:])]


@pytest.fixture(scope="module")
def mia_runs(tiny_path, tmp_path_factory):
    """rwku_mia on small texts through lm-eval, with our fast model and with lm-eval's hf model."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from ulmr.fast_lm import FastLM
    from ulmr.models import load_model

    root = _mia_data_dir(tmp_path_factory.mktemp("rwku_mia"))
    runs = {}
    for name in ("fast", "hf"):
        model, tokenizer = load_model(tiny_path, dtype="fp32", device="cpu")
        lm = (FastLM(pretrained=model, tokenizer=tokenizer, dtype="fp32", device="cpu", batch_size=4)
              if name == "fast" else HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4))
        manager = TaskManager(include_path=str(TASKS_PATH), include_defaults=False,
                              metadata={"tokenizer": tiny_path, "data_dir": str(root)})
        out = lm_eval.simple_evaluate(model=lm, tasks=["rwku_mia"], task_manager=manager, log_samples=True)
        runs[name] = (lm, out)
    return runs


@pytest.mark.parametrize("backend", ["fast", "hf"])
def test_mia_losses_equal_independent_computation(tiny, mia_runs, backend):
    model, tokenizer = tiny
    lm, out = mia_runs[backend]
    metrics = out["results"]["rwku_mia"]
    forget = [_token_logprobs(model, tokenizer, t) for t in FORGET_TEXTS]
    retain = [_token_logprobs(model, tokenizer, t) for t in RETAIN_TEXTS]

    def loss(lp):
        return -sum(lp) / len(lp)

    fm, rm = [loss(lp) for lp in forget], [loss(lp) for lp in retain]
    assert metrics["fm_loss,none"] == pytest.approx(sum(fm) / 2, rel=1e-5)
    assert metrics["rm_loss,none"] == pytest.approx(sum(rm) / 3, rel=1e-5)
    assert metrics["auroc,none"] == pytest.approx(loss_auroc(fm, rm))
    zlib_len = [len(zlib.compress(t.encode())) for t in FORGET_TEXTS]
    assert metrics["fm_zlib,none"] == pytest.approx(sum(l / z for l, z in zip(fm, zlib_len)) / 2, rel=1e-5)
    # Min-K% is ours, computed after lm-eval with the same model: the same independent log-probs
    min_k = min_k_metrics(lm, out["samples"])
    assert min_k["mia_fm_mink"] == pytest.approx(sum(map(min_k_loss, forget)) / 2, rel=1e-5)
    assert min_k["mia_rm_mink"] == pytest.approx(sum(map(min_k_loss, retain)) / 3, rel=1e-5)
    assert min_k["mia_auroc_mink"] == pytest.approx(loss_auroc([min_k_loss(lp) for lp in forget],
                                                               [min_k_loss(lp) for lp in retain]))


def test_fast_backend_min_k_reads_its_rolling_logprobs_without_a_forward(mia_runs):
    lm, out = mia_runs["fast"]
    forwards = []
    hook = lm.model.register_forward_pre_hook(lambda *args: forwards.append(1))
    try:
        kept = min_k_metrics(lm, out["samples"])
        assert forwards == []  # lm-eval's rolling requests already computed every token
        saved, lm.rolling_logprobs = lm.rolling_logprobs, {}
        try:
            recomputed = min_k_metrics(lm, out["samples"])  # a forward per text, as for the hf backend
        finally:
            lm.rolling_logprobs = saved
    finally:
        hook.remove()
    assert forwards and kept == pytest.approx(recomputed, rel=1e-6)


def test_mia_docs_interleave_forget_and_retain(mia_runs):
    _, out = mia_runs["fast"]
    docs = [s["doc"] for s in sorted(out["samples"]["rwku_mia"], key=lambda s: s["doc_id"])]
    assert [d["set"] for d in docs] == ["FM", "RM", "FM", "RM", "RM"]
    assert docs[0]["n_tokens"] == len(FORGET_TEXTS[0].encode())  # byte-level tokenizer, no BOS


@pytest.fixture(scope="module")
def cli_run(tiny_path, data_dir, tmp_path_factory):
    """`ulmr-bench eval --benchmark rwku --targets 1 --limit 2` on the tiny model: printed table,
    results JSON and samples. lm-eval's hf backend: it left-truncates the 5-shot MMLU prompts the
    byte-level tiny model cannot hold (1024 positions), where the fast backend refuses them."""
    output = tmp_path_factory.mktemp("rwku_cli") / "rwku.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["eval", "--model", tiny_path, "--benchmark", "rwku", "--targets", "1", "--limit", "2",
              "--max-gen-toks", "2", "--backend", "hf", "--dtype", "fp32", "--device", "cpu",
              "--batch-size", "8", "--data-dir", str(data_dir), "--output", str(output)])
    samples = {}
    for line in output.with_suffix(".samples.jsonl").read_text().splitlines():
        record = json.loads(line)
        samples.setdefault(record["task"], []).append(record)
    return printed.getvalue(), json.loads(output.read_text()), samples


def test_cli_prints_rwku_table(cli_run):
    printed, result, _ = cli_run
    lines = printed.splitlines()
    assert lines[0] == f"rwku 1 | {result['model']} | targets 1 Stephen King | first 2 docs per task"
    assert lines[-1].startswith("results: ")
    table = lines[2:-1]
    rows = {line.split()[0]: line.split()[1:] for line in table if not line.startswith(" ")}
    headers = [line.split() for line in table if line.startswith(" ")]
    assert list(rows) == ["Forget", "Neighbor", "MIA", "Utility"]
    assert headers[0] == ["FB", "QA", "AA", "All"] and headers[1] == ["FB", "QA", "All"]
    assert headers[2][:3] == ["FM", "RM", "AUROC"] and headers[3] == ["Gen", "Rea", "Tru", "Fac", "Flu"]
    assert len(rows["MIA"]) == 9 and len(rows["Utility"]) == 5


def test_results_record_targets_slice_and_columns(cli_run):
    _, result, _ = cli_run
    assert result["selection"] == "1"
    assert result["eval"]["limit"] == 2
    assert result["eval"]["targets"] == [{"index": 1, "name": "Stephen King"}]
    assert set(result["eval"]["n_docs"].values()) == {2} and len(result["eval"]["n_docs"]) == 11
    assert list(result["metrics"]) == [key for key, *_ in TABLE]
    assert all(isinstance(v, float) for v in result["metrics"].values())


def test_samples_show_rwkus_prompt_and_score(cli_run):
    _, result, samples = cli_run
    first = min(samples["rwku_forget_fb"], key=lambda s: s["doc_id"])
    assert first["doc"]["prompt"] == (
        "<|im_start|>user\nPlease complete the blank in the following question.\n"
        "Question: Stephen Edwin King (born September 21, 1947) is an American ___\n<|im_end|>\n"
        "<|im_start|>assistant\nAnswer:")
    probes = [s for task in ("rwku_forget_fb", "rwku_forget_qa", "rwku_forget_aa") for s in samples[task]]
    for s in probes:
        prediction = s["filtered_resps"][0].strip() or "NOANSWER"
        expected = Rouge().get_scores(prediction, s["doc"]["reference"])[0]["rouge-l"]["r"]
        assert s["rougeL_recall"] == pytest.approx(expected)
    # All pools every probe of FB, QA and AA
    assert result["metrics"]["forget_all"] == pytest.approx(sum(s["rougeL_recall"] for s in probes) / 6)


def test_unknown_target_in_cli_is_one_line(tiny_path, data_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--model", tiny_path, "--benchmark", "rwku", "--targets", "Stephen Kng", "--limit", "1",
              "--data-dir", str(data_dir)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: unknown RWKU target 'Stephen Kng'")


@pytest.mark.slow
def test_plain_lm_eval_and_evaluate_agree_on_smollm2(data_dir):
    """The embedded model on target 1: lm-eval's own hf model through plain simple_evaluate, and
    our evaluate() (fast backend), give the same RWKU numbers."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from ulmr.benchmarks.registry import get_benchmark
    from ulmr.evaluation import EvalSettings, evaluate
    from ulmr.models import resolve_model

    path = resolve_model("smollm2-135m")
    limit, max_gen_toks = 2, 8
    manager = TaskManager(include_path=str(TASKS_PATH), include_defaults=False,
                          metadata={"targets": "1", "data_dir": str(data_dir), "pretrained": path})
    plain = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": path, "dtype": "float32", "device": "cpu"},
                                    tasks=["rwku"], task_manager=manager, limit=limit, batch_size=1,
                                    gen_kwargs={"max_gen_toks": max_gen_toks})
    ours = evaluate(path, EvalSettings(benchmark="rwku", selection="1", data_dir=str(data_dir),
                                               limit=limit, dtype="fp32", device="cpu", batch_size=1,
                                               max_gen_toks=max_gen_toks))
    plain_metrics, _ = get_benchmark("rwku").summarize(plain["results"], {})
    lm_eval_metrics = {k: v for k, v in plain_metrics.items() if not k.endswith("_mink")}  # Min-K% is ours
    assert any(v is not None for v in lm_eval_metrics.values())
    for key, value in lm_eval_metrics.items():
        assert ours["metrics"][key] == (None if value is None else pytest.approx(value, rel=1e-3, abs=1e-4)), \
            (key, ours["metrics"][key], value)


def test_per_task_limits_slice_only_the_named_tasks(tiny_path, data_dir):
    from ulmr.errors import UlmrError
    from ulmr.evaluation import EvalSettings, evaluate

    settings = EvalSettings(benchmark="rwku", selection="1", data_dir=str(data_dir), limit=2,
                            limits={"rwku_utility": 1}, tasks=["rwku_forget", "rwku_utility"],
                            max_gen_toks=2, backend="hf", dtype="fp32", device="cpu", batch_size=8)
    result = evaluate(tiny_path, settings)
    n_docs = result["eval"]["n_docs"]
    assert {n_docs[f"rwku_forget_{level}"] for level in ("fb", "qa", "aa")} == {2}
    assert {n for task, n in n_docs.items() if task.startswith("rwku_utility")} == {1}
    assert result["eval"]["limits"] == {"rwku_utility": 1}
    with pytest.raises(UlmrError, match="eval limits name rwku_utilty, not among"):
        evaluate(tiny_path, EvalSettings(benchmark="rwku", data_dir=str(data_dir), limits={"rwku_utilty": 1}))
