"""Shared by the task folders: the model's tokenizer, named by lm-eval's model arguments or metadata."""

from __future__ import annotations

import functools
from typing import Any

from ulmr.errors import UlmrError


def task_tokenizer(options: dict[str, Any], needed_for: str):
    """The tokenizer of `tokenizer=` (metadata) or `pretrained=` (model arguments), loaded once."""
    name = options.get("tokenizer") or options.get("pretrained")
    if not name:
        raise UlmrError(f"{needed_for} need the model's tokenizer: pass --model_args pretrained=<model> "
                        "or --metadata '{\"tokenizer\": \"<name>\"}'")
    return _load_tokenizer(str(name))


@functools.cache
def _load_tokenizer(name: str):
    from ulmr.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(name))
