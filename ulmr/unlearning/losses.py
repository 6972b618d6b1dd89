"""Loss pieces shared by the methods: answer-token NLL, per-sequence answer log-probs, KL to the
reference, and the optional retain term. Every function reads only the tokens that carry labels
(the answer tokens of a question/answer example, every token of a plain text)."""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from ulmr.unlearning.batches import IGNORE_INDEX, Batch, Part


def accepts_logits_to_keep(model) -> bool:
    """Whether the model's forward takes transformers' `logits_to_keep` (projects only the last
    positions onto the vocabulary); looks through DistributedDataParallel and PEFT wrappers."""
    model = getattr(model, "module", model)
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def next_token_logits(model, part: Part) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token logits and the labels they predict, from the batch's first labelled position on:
    ([batch, n, vocab], [batch, n]), logits[:, t] predicting labels[:, t]. The positions before it
    (every row's prompt up to the shortest prompt) are not projected onto the vocabulary where the
    model allows it: no loss reads them (the head is a fifth of the embedded model's matmul
    arithmetic, and its fp32 log-softmax runs over 49,152 columns a position)."""
    labels = part["labels"][:, 1:]
    labelled = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    first = int(labelled[0]) if len(labelled) else 0
    if accepts_logits_to_keep(model):
        out = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"], use_cache=False,
                    logits_to_keep=labels.shape[1] + 1 - first)
        return out.logits[:, :-1], labels[:, first:]
    out = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"], use_cache=False)
    return out.logits[:, first:-1], labels[:, first:]


def token_logprobs(model, part: Part) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(label | previous tokens) at each labelled position (0 elsewhere) and the mask of
    labelled positions, both [batch, n]: the positions from the batch's first label on
    (next_token_logits), so sums over them are sums over every label."""
    logits, labels = next_token_logits(model, part)
    scores = logits.float()  # log-softmax in fp32, also under bf16 autocast
    mask = labels != IGNORE_INDEX
    # Flattened to [tokens, vocab]: cross-entropy over a contiguous last dim is twice as fast on CPU.
    logp = -F.cross_entropy(scores.reshape(-1, scores.shape[-1]), labels.clamp(min=0).reshape(-1),
                            reduction="none").view(labels.shape)
    return logp * mask, mask


def sequence_logprob(model, part: Part) -> torch.Tensor:
    """log p(answer | prompt) per sequence, summed over answer tokens: [batch]."""
    logp, _ = token_logprobs(model, part)
    return logp.sum(dim=1)


def answer_nll(model, part: Part) -> torch.Tensor:
    """Mean NLL over all answer tokens of the batch (the causal-LM loss of transformers)."""
    logp, mask = token_logprobs(model, part)
    return -logp.sum() / mask.sum()


def kl_to_reference(model, reference, part: Part) -> torch.Tensor:
    """KL(p_ref || p_theta) of the next-token distributions, averaged over answer tokens."""
    logits, labels = next_token_logits(model, part)
    logp = F.log_softmax(logits.float(), -1)
    with torch.no_grad():
        ref_logp = F.log_softmax(next_token_logits(reference, part)[0].float(), -1)
    mask = labels != IGNORE_INDEX
    kl = F.kl_div(logp, ref_logp, log_target=True, reduction="none").sum(-1)
    return (kl * mask).sum() / mask.sum()


def retain_term(model, batch: Batch, reference, config) -> dict[str, torch.Tensor]:
    """{"retain": config.retain_weight * (NLL or KL-to-reference) on the retain batch}, or {} when
    the weight is 0. Methods add it to their own terms: `{"forget": ..., **retain_term(...)}`."""
    if config.retain_weight == 0:
        return {}
    part = batch["retain"]
    term = answer_nll(model, part) if config.retain_loss == "nll" else kl_to_reference(model, reference, part)
    return {"retain": config.retain_weight * term}
