"""Options shared by several subcommands (model, data, prompt template, evaluation)."""

from __future__ import annotations

import click

from ulmr.models import DEFAULT_MODEL
from ulmr.prompts import TOKEN_BOUNDARIES, PromptTemplate


def compose(*decorators):
    def apply(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func
    return apply


model_option = click.option("--model", default=DEFAULT_MODEL, show_default=True,
                            help="Hub id, local checkpoint folder, or alias (smollm2-135m, tiny-random).")
data_dir_option = click.option("--data-dir", envvar="ULMR_DATA_DIR", type=click.Path(),
                               help="Local data directory laid out as ../shared/data "
                                    "(env ULMR_DATA_DIR); default: the hub.")

template_options = compose(
    click.option("--prompt-template", type=click.Choice(["chat", "tags"]), default="chat", show_default=True,
                 help="chat: the tokenizer's chat template; tags: TOFU-style question/answer tags."),
    click.option("--question-start-tag", default=PromptTemplate.question_start_tag, show_default=True),
    click.option("--question-end-tag", default=PromptTemplate.question_end_tag, show_default=True),
    click.option("--answer-tag", default=PromptTemplate.answer_tag, show_default=True),
    click.option("--system-prompt", default=None, help="Chat only: system turn (default: the template's)."),
)

eval_options = compose(
    click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True),
    click.option("--limit", type=click.IntRange(min=1), default=None,
                 help="Score only the first N documents of every task (recorded in the results)."),
    click.option("--dtype", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True,
                 help="auto: bf16 where the hardware has bf16 units, else fp32."),
    click.option("--device", default=None, help="cpu or cuda (default: cuda when available)."),
    click.option("--backend", type=click.Choice(["fast", "hf", "vllm"]), default="fast", show_default=True,
                 help="fast: our prefix-sharing transformers model (lm-eval's hf numbers, less compute); "
                      "hf: lm-eval's own; vllm: lm-eval's vLLM model (GPU machines, the vllm extra)."),
    click.option("--max-gen-toks", type=click.IntRange(min=1), default=None,
                 help="Cap on generated tokens (default: each task's own; a cap changes the metric)."),
    click.option("--token-boundary", type=click.Choice(TOKEN_BOUNDARIES), default="answer", show_default=True,
                 help="TOFU Probability's scored tokens: answer (the answer's tokens and EOS), open-unlearning "
                      "or tofu (those codebases' rules; lm_eval_tasks/tofu/README.md)."),
)


def template_from(kwargs) -> PromptTemplate:
    """Pop the template options out of a command's kwargs (--token-boundary: eval's commands only)."""
    return PromptTemplate(kind=kwargs.pop("prompt_template"),
                          question_start_tag=_unescape(kwargs.pop("question_start_tag")),
                          question_end_tag=_unescape(kwargs.pop("question_end_tag")),
                          answer_tag=_unescape(kwargs.pop("answer_tag")),
                          system_prompt=kwargs.pop("system_prompt"),
                          token_boundary=kwargs.pop("token_boundary", "answer"))


def _unescape(tag: str) -> str:
    """Let shells pass a newline as the two characters \\n."""
    return tag.replace("\\n", "\n")


# which profile and what to run from it: shared by `run` and `tune`
profile_selection_options = compose(
    click.option("--profile", default="quick", show_default=True,
                 help="smoke, quick, full, or a profile YAML file (ulmr/profiles/)."),
    click.option("--methods", default=None, help="Comma list of methods, or 'all' (default: the profile's)."),
    click.option("--benchmarks", default=None, help="Comma list: tofu, rwku (default: the profile's)."),
    click.option("--seeds", default=None, help="Comma list of seeds (default: the profile's)."),
    click.option("--model", default=None, help="Base model (default: the profile's)."),
    click.option("--set", "set_options", multiple=True, metavar="KEY=VALUE",
                 help="Override a profile field by dotted key, e.g. --set tofu.eval.limit=20."),
)


def profile_overrides(methods, benchmarks, seeds, model, set_options) -> dict:
    """The profile overrides the selection options ask for (--set first, the named options win)."""
    from ulmr.unlearning.config import parse_set_options
    from ulmr.unlearning.registry import available_methods

    overrides = parse_set_options(set_options)
    if methods:
        overrides["methods"] = list(available_methods()) if methods == "all" else _split(methods)
    if benchmarks:
        overrides["benchmarks"] = _split(benchmarks)
    if seeds:
        overrides["seeds"] = [_seed(s) for s in _split(seeds)]
    if model:
        overrides["model"] = model
    return overrides


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _seed(text: str) -> int:
    from ulmr.errors import UlmrError

    if not text.lstrip("-").isdigit():
        raise UlmrError(f"seed {text!r} is not an integer: pass e.g. --seeds 0,1,2")
    return int(text)
