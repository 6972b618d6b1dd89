"""Options shared by several subcommands (model, data, prompt template, evaluation)."""

from __future__ import annotations

import click

from ulmr.errors import UlmrError
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

# every selection option a command was built with (a benchmark registered later, or one that a test
# registered and removed again, may differ from the registry now)
_SELECTION_OPTIONS: dict[str, str] = {}


def benchmark_options(func):
    """--benchmark, and the selection option of every registered benchmark (--split, --targets, ...)."""
    from ulmr.benchmarks.registry import available_benchmarks

    benchmarks = available_benchmarks()
    selections = {bench.selection_option: bench.selection_help for bench in reversed(benchmarks.values())}
    _SELECTION_OPTIONS.update(selections)
    return compose(
        click.option("--benchmark", default="tofu", show_default=True,
                     help=f"Registered benchmark: {', '.join(benchmarks)}."),
        *[click.option(f"--{option.replace('_', '-')}", option, default=None, help=help_text)
          for option, help_text in selections.items()],
    )(func)


def selection_from(benchmark: str, kwargs) -> str | None:
    """Pop every benchmark's selection option out of a command's kwargs; return the chosen benchmark's
    (None: its default). An option of another benchmark is an error, not silently ignored."""
    from ulmr.benchmarks.registry import available_benchmarks, get_benchmark

    bench = get_benchmark(benchmark)
    options = set(_SELECTION_OPTIONS) | {b.selection_option for b in available_benchmarks().values()}
    given = {option: kwargs.pop(option, None) for option in options}
    wrong = sorted(option for option, value in given.items() if value is not None and option != bench.selection_option)
    if wrong:
        raise UlmrError(f"--{wrong[0].replace('_', '-')} is not an option of {benchmark}: its selection is "
                        f"--{bench.selection_option.replace('_', '-')}")
    return given[bench.selection_option]


template_options = compose(
    click.option("--prompt-template", type=click.Choice(["chat", "tags"]), default="chat", show_default=True,
                 help="chat: the tokenizer's chat template; tags: TOFU-style question/answer tags."),
    click.option("--question-start-tag", default=PromptTemplate.question_start_tag, show_default=True),
    click.option("--question-end-tag", default=PromptTemplate.question_end_tag, show_default=True),
    click.option("--answer-tag", default=PromptTemplate.answer_tag, show_default=True),
    click.option("--system-prompt", default=None,
                 help="An instruction before every prompt: chat: the system turn (default: the template's); "
                      "tags: a line before the question (e.g. the prompt `unlearn --method icu` prints)."),
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
    click.option("--benchmarks", default=None, help="Comma list of registered benchmarks (default: the profile's)."),
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
    if methods is not None:
        overrides["methods"] = list(available_methods()) if methods == "all" else _split(methods, "methods")
    if benchmarks is not None:
        overrides["benchmarks"] = _split(benchmarks, "benchmarks")
    if seeds is not None:
        overrides["seeds"] = [_seed(s) for s in _split(seeds, "seeds")]
    if model:
        overrides["model"] = model
    return overrides


def _split(text: str, option: str) -> list[str]:
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise UlmrError(f"--{option} {text!r} has an empty item: list names separated by single commas, "
                        f"e.g. --{option} {','.join(p for p in parts if p) or '...'}")
    return parts


def _seed(text: str) -> int:
    if not text.isdigit():
        raise UlmrError(f"seed {text!r} is not a non-negative integer: pass e.g. --seeds 0,1,2")
    return int(text)
