"""The lm-eval task class of RWKU's probes: a ConfigurableTask whose stop strings follow the
`probe_stop` metadata.

RWKU's own code stops a probe's generation at EOS or at 30 new tokens: the newline stop ids it also
passes do not name a newline in byte-level BPE vocabularies (README.md, "Generation"). That is the
default here ("eos": no stop string of ours; lm-eval's models always add the tokenizer's EOS).
`probe_stop: newline` also cuts each generation at its first newline, as these tasks did before.

A separate module from utils.py so that the scorers there import without lm-eval.
"""

from __future__ import annotations

import importlib.util

from lm_eval.api.task import ConfigurableTask

from ulmr.errors import UlmrError

# probe_stop value -> the probes' `until` (lm-eval appends the tokenizer's EOS to it)
PROBE_STOPS = {"eos": [], "newline": ["\n"]}
DEFAULT_PROBE_STOP = "eos"


def probe_until(metadata: dict | None) -> list[str]:
    """The stop strings of a probe under the task metadata's `probe_stop`."""
    choice = (metadata or {}).get("probe_stop") or DEFAULT_PROBE_STOP
    if choice not in PROBE_STOPS:
        raise UlmrError(f"unknown probe_stop {choice!r}: use " + " or ".join(PROBE_STOPS))
    return list(PROBE_STOPS[choice])


class ProbeTask(ConfigurableTask):
    def __init__(self, config: dict | None = None, **kwargs):
        if importlib.util.find_spec("lm_eval.tasks._factory") is None:
            # lm-eval's older task manager merged --metadata into YAML tasks only, not class-based ones
            raise UlmrError("this lm-eval does not pass --metadata to class-based tasks such as RWKU's "
                            "probes: upgrade lm-eval (0.4.13 does)")
        config = {key: value for key, value in (config or {}).items() if key != "class"}
        generation = dict(config.get("generation_kwargs") or {})
        generation["until"] = probe_until(config.get("metadata"))
        super().__init__(config={**config, "generation_kwargs": generation}, **kwargs)
