"""Examples -> token ids with labels -> padded batches: the tokenisation every training loss uses.

A question/answer Example is tokenised exactly as evaluation scores it (`split_pair` on the rendered
prompt and the answer plus EOS), and only its answer tokens carry labels, so training moves the very
log-likelihoods lm-eval reads. A plain-text Example (no question) carries labels on every token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ulmr.errors import UlmrError
from ulmr.prompts import PromptTemplate, answer_with_eos, encode, render_prompt, split_pair
from ulmr.unlearning.interface import Example

IGNORE_INDEX = -100  # label of tokens that carry no loss (the convention of transformers' losses)

# A batch maps part names ("forget", "retain", or a method's own, e.g. DPO's "preferred"/"rejected")
# to tensors: input_ids, attention_mask and labels, each [batch, length].
Part = dict[str, torch.Tensor]
Batch = dict[str, Part]


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]


def encode_example(tokenizer, template: PromptTemplate, example: Example, max_length: int) -> Encoded:
    """Token ids and labels of one example, cut to max_length tokens from the right."""
    if example.question is None:
        ids = encode(tokenizer, example.answer)
        labels = list(ids)
    else:
        prompt = render_prompt(tokenizer, template, example.question)
        pair = split_pair(tokenizer, prompt, answer_with_eos(tokenizer, example.answer))
        ids = pair.context_ids + pair.continuation_ids
        labels = [IGNORE_INDEX] * (len(pair.context_ids) + pair.n_prompt_ws) + pair.answer_ids
    ids, labels = ids[:max_length], labels[:max_length]
    # The first position is never predicted (labels shift by one), so it cannot carry the loss.
    if all(label == IGNORE_INDEX for label in labels[1:]):
        what = "a plain text" if example.question is None else f"the question {example.question[:40]!r}"
        raise UlmrError(f"{what} leaves no answer tokens within max_length={max_length}: "
                        "raise max_length or drop empty examples")
    return Encoded(ids, labels)


def collate(items: list[Encoded], pad_id: int) -> Part:
    """Right-padded tensors; padding is masked out of attention and loss."""
    width = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        input_ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def batches_per_epoch(n_items: int, batch_size: int, num_processes: int = 1) -> int:
    """Micro-batches one process sees in one pass over the forget parts."""
    per_process = -(-n_items // num_processes)
    return -(-per_process // batch_size)


def micro_batches(forget: dict[str, list[Example]], retain: list[Example] | None,
                  encode: Callable[[Example], Encoded], batch_size: int, seed: int, pad_id: int,
                  process_index: int = 0, num_processes: int = 1, group_by_length: bool = False,
                  drawn: Callable[[str, list[int]], None] | None = None) -> Iterator[Batch]:
    """Endless micro-batches: the forget parts (aligned lists, batched together by index) in seeded
    shuffled epochs, each batch joined by a retain batch of the same size drawn without replacement
    from a reshuffled retain list. Under several processes each takes its own slice of every epoch
    (the data-parallel sharding: batches are built here, not by a DataLoader that
    `accelerator.prepare` would shard). With group_by_length, batches hold items of similar length (see TrainingConfig).
    drawn(part, indices): told, for every part of a batch about to be yielded, which items of that
    part's list it holds (the training record counts distinct examples with it)."""
    first_part = next(iter(forget.values()))
    n_items = len(first_part)
    order_rng = random.Random(seed)  # the same on every process, so the slices do not overlap
    retain_rng = random.Random(f"retain-{seed}-{process_index}")
    retain_queue: list[int] = []
    while True:
        order = list(range(n_items))
        order_rng.shuffle(order)
        order += order[: -len(order) % num_processes]  # an equal share for every process
        share = order[process_index::num_processes]
        if group_by_length:
            batches = _length_grouped(share, batch_size, lambda i: len(encode(first_part[i]).input_ids), order_rng)
        else:
            batches = [share[start:start + batch_size] for start in range(0, len(share), batch_size)]
        for indices in batches:
            batch = {name: collate([encode(part[i]) for i in indices], pad_id) for name, part in forget.items()}
            picks = []
            if retain:
                for _ in indices:
                    if not retain_queue:
                        retain_queue = retain_rng.sample(range(len(retain)), len(retain))
                    picks.append(retain_queue.pop())
                batch["retain"] = collate([encode(retain[i]) for i in picks], pad_id)
            if drawn is not None:
                for name in batch:
                    drawn(name, picks if name == "retain" else indices)
            yield batch


def _length_grouped(indices: list[int], batch_size: int, length: Callable[[int], int],
                    rng: random.Random, window_batches: int = 16) -> list[list[int]]:
    """Batches of similar-length items: each window of `window_batches` batches is sorted by
    length and cut into batches, and the batches of the epoch are shuffled."""
    window = batch_size * window_batches
    batches = []
    for start in range(0, len(indices), window):
        ordered = sorted(indices[start:start + window], key=length)
        batches += [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    rng.shuffle(batches)
    return batches
