"""A transformers-backed lm-eval model that gives lm-eval's "hf" numbers with less compute.

Registered with lm-eval as `ulmr-fast` (the `fast` backend of `ulmr-bench eval`). Tokenisation is
lm-eval's own (`TemplateLM._encode_pair`, tokenizer defaults), so the same tokens are scored; the
work saved is pure recomputation:

- log-likelihoods: requests that share a context (TOFU scores 4-8 answers per question) are packed
  into one row, the context once and every continuation after it, with a tree-shaped attention
  mask and restarted position ids, so the context is computed once; the vocabulary projection runs
  only at the positions whose next token is scored.
- generation: greedy decoding with a KV cache, prompts sorted by length into batches sized by a
  token budget rather than a row count, and rows that have stopped are dropped from the batch
  instead of decoding padding until the longest row ends.
"""

from __future__ import annotations

import inspect
import json
from collections import defaultdict

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from ulmr.prompts import encode


@register_model("ulmr-fast")
class FastLM(TemplateLM):
    def __init__(self, pretrained, tokenizer=None, dtype: str = "auto", device: str | None = None,
                 batch_size: int | str = 16, max_gen_toks: int = 256, row_tokens: int = 1024,
                 generation_tokens: int = 32768, **_ignored):
        super().__init__()
        from ulmr.hardware import default_device, resolve_dtype
        from ulmr.models import load_model, load_tokenizer

        self.device_name = device or default_device()
        if isinstance(pretrained, str):
            self.model, self.tokenizer = load_model(pretrained, dtype=dtype, device=self.device_name)
        else:  # an in-memory model (e.g. just unlearned)
            self.model = pretrained.to(self.device_name).eval()
            self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(pretrained.name_or_path)
        self.compute_dtype = resolve_dtype(dtype, self.device_name)
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.row_tokens = int(row_tokens)  # longest packed scoring row (attention is quadratic in it)
        # a generation batch holds rows while their (prompt + new tokens) sum stays within this: each
        # decoding step streams every weight, so on a CPU 160 TOFU rows in one batch decode twice
        # as fast as in batches of 16; the budget bounds the KV cache (~1.5 GB for SmolLM2 in fp32)
        self.generation_tokens = int(generation_tokens)
        self.decoder = self.model.get_decoder()
        self.lm_head = self.model.get_output_embeddings()
        self.softcap = getattr(self.model.config, "final_logit_softcapping", None)
        self.stop_ids = _stop_token_ids(self.model, self.tokenizer)
        self.eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        # transformers 5.24 renamed forward()'s past_key_values to cache; accept either release
        self.cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        # work done, for benchmark reports: tokens through the model, scored, generated
        self.counters = {"forward_tokens": 0, "scored_tokens": 0, "generated_tokens": 0}

    # ---- what TemplateLM needs -------------------------------------------------------------

    @property
    def eot_token_id(self):
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self):
        # as lm-eval's HF model: BOS where the tokenizer has one, else end-of-text
        return self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        if add_special_tokens is not None:
            return self.tokenizer.encode(string, add_special_tokens=add_special_tokens)
        return encode(self.tokenizer, string)

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # ---- log-likelihoods -------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        groups: dict[tuple, list[int]] = defaultdict(list)  # context tokens -> request indices
        for i, (_, context, continuation) in enumerate(requests):
            # as lm-eval's hf model: a request longer than the model's window loses context on the left
            keep = self.max_length + 1 - len(continuation)
            groups[tuple(context[-keep:] if len(context) > keep else context)].append(i)
        packed = [(list(ctx), [requests[i][2] for i in chunk], chunk)
                  for ctx, idx in groups.items() for chunk in self._row_chunks(ctx, idx, requests)]
        packed.sort(key=lambda g: -(len(g[0]) + sum(len(c) - 1 for c in g[1])))
        results: list = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="Scoring (shared contexts)", disable=disable_tqdm)
        for start in range(0, len(packed), self.batch_size):
            batch = packed[start:start + self.batch_size]
            for (logprob, greedy), index in zip(self._score_packed(batch), (i for g in batch for i in g[2])):
                results[index] = (logprob, greedy)
            bar.update(sum(len(g[2]) for g in batch))
        bar.close()
        return results

    def _row_chunks(self, context, indices, requests):
        """Split one context's continuations into rows of at most `row_tokens` tokens.

        Packing pays off by not repeating the context, but attention over a row is quadratic in its
        length: rolling windows all share the one-token BOS context, and packing a whole MIA set
        into one row once cost 8 GiB and ran at 17 % of the FLOP floor.
        """
        chunk, length = [], len(context)
        for i in indices:
            body = len(requests[i][2]) - 1
            if chunk and length + body > self.row_tokens:
                yield chunk
                chunk, length = [], len(context)
            chunk.append(i)
            length += body
        yield chunk

    @torch.no_grad()
    def _score_packed(self, batch):
        """One forward over rows of [context | cont_1[:-1] | cont_2[:-1] | ...]."""
        rows, predict_at, targets = [], [], []
        for context, continuations, _ in batch:
            ids, positions, segments = list(context), list(range(len(context))), [0] * len(context)
            row_predict, row_targets = [], []
            for j, cont in enumerate(continuations, start=1):
                start = len(ids)
                body = cont[:-1]
                ids += body
                positions += range(len(context), len(context) + len(body))
                segments += [j] * len(body)
                # the first token is predicted from the last context position, the rest from the body
                row_predict.append([len(context) - 1] + list(range(start, start + len(body))))
                row_targets.append(cont)
            rows.append((ids, positions, segments))
            self.counters["forward_tokens"] += len(ids)
            self.counters["scored_tokens"] += sum(len(c) for c in row_targets)
            predict_at.append(row_predict)
            targets.append(row_targets)
        width = max(len(r[0]) for r in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), 1, width, width), dtype=torch.bool)
        for b, (ids, positions, segments) in enumerate(rows):
            n = len(ids)
            input_ids[b, :n] = torch.tensor(ids)
            position_ids[b, :n] = torch.tensor(positions)
            seg = torch.tensor(segments)
            causal = torch.ones(n, n, dtype=torch.bool).tril()
            # a token sees the context (segment 0) and earlier tokens of its own continuation
            same_or_context = (seg[None, :] == 0) | (seg[None, :] == seg[:, None])
            mask[b, 0, :n, :n] = causal & same_or_context
            mask[b, 0, n:, 0] = True  # padding rows attend somewhere, to keep softmax finite
        device = self.model.device
        with torch.autocast(device_type=device.type, dtype=self.compute_dtype,
                            enabled=self.compute_dtype != torch.float32):
            hidden = self.decoder(input_ids=input_ids.to(device), position_ids=position_ids.to(device),
                                  attention_mask=mask.to(device)).last_hidden_state
            out = []
            for b in range(len(rows)):
                flat_at = [p for pred in predict_at[b] for p in pred]
                logits = self.lm_head(hidden[b, flat_at]).float()
                if self.softcap:
                    logits = torch.tanh(logits / self.softcap) * self.softcap
                logprobs = F.log_softmax(logits, dim=-1)
                flat_targets = torch.tensor([t for cont in targets[b] for t in cont], device=device)
                token_lp = logprobs.gather(1, flat_targets[:, None])[:, 0]
                greedy = logprobs.argmax(-1) == flat_targets
                offset = 0
                for cont in targets[b]:
                    span = slice(offset, offset + len(cont))
                    out.append((float(token_lp[span].sum()), bool(greedy[span].all())))
                    offset += len(cont)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        """Whole-text log-likelihoods in lm-eval's rolling windows (one window for short texts)."""
        windows, owners = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append(((None,), list(context), list(continuation)))
                owners.append(i)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[owner] += logprob
        return totals

    # ---- generation ------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False):
        by_settings: dict[str, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            by_settings[json.dumps(req.args[1], sort_keys=True, default=str)].append(i)
        results: list = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="Generating (greedy)", disable=disable_tqdm)
        for settings_key, indices in by_settings.items():
            settings = json.loads(settings_key)
            until = handle_stop_sequences(settings.get("until"), eos=self.eos_text)
            max_new = int(settings.get("max_gen_toks", self.max_gen_toks))
            if settings.get("do_sample") or (settings.get("temperature") or 0) > 0:
                raise ValueError("the fast backend decodes greedily only; use --backend hf for sampling")
            encoded = [(i, self.tok_encode(requests[i].args[0])[-(self.max_length - max_new):]) for i in indices]
            encoded.sort(key=lambda item: -len(item[1]))
            for batch in self._generation_batches(encoded, max_new):
                texts = self._greedy_batch([ids for _, ids in batch], max_new, until)
                for (i, _), text in zip(batch, texts):
                    results[i] = text
                bar.update(len(batch))
        bar.close()
        return results

    def _generation_batches(self, encoded, max_new: int):
        """Consecutive runs of the longest-first prompts, each within the generation token budget
        (rows x (longest prompt + max_new)); at least one row each."""
        start = 0
        while start < len(encoded):
            rows = max(1, self.generation_tokens // (len(encoded[start][1]) + max_new))
            yield encoded[start:start + rows]
            start += rows

    @torch.no_grad()
    def _greedy_batch(self, prompts: list[list[int]], max_new: int, until: list[str]) -> list[str]:
        device = self.model.device
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        generated: list[list[int]] = [[] for _ in prompts]
        self.counters["forward_tokens"] += sum(len(p) for p in prompts)
        alive = list(range(len(prompts)))  # original row of each row still in the batch
        cache = None
        step_ids, step_positions = input_ids, positions
        # the end-of-sequence text is caught by its token id; only other stop strings need decoding
        stop_texts = [t for t in until if t and t != self.eos_text]
        with torch.autocast(device_type=device.type, dtype=self.compute_dtype,
                            enabled=self.compute_dtype != torch.float32):
            for _ in range(max_new):
                out = self.model(input_ids=step_ids, attention_mask=attention, position_ids=step_positions,
                                 use_cache=True, logits_to_keep=1, **{self.cache_arg: cache})
                cache = out[self.cache_arg]
                next_ids = out.logits[:, -1].argmax(-1)
                keep = []
                for k, (row, token) in enumerate(zip(alive, next_ids.tolist())):  # one device sync a step
                    generated[row].append(token)
                    if token in self.stop_ids or len(generated[row]) >= max_new:
                        continue
                    if stop_texts and any(t in self.tok_decode(generated[row]) for t in stop_texts):
                        continue
                    keep.append(k)
                if not keep:
                    break
                if len(keep) < len(alive):  # drop finished rows instead of decoding padding
                    index = torch.tensor(keep, device=device)
                    cache.batch_select_indices(index)
                    attention, next_ids, step_positions = attention[index], next_ids[index], step_positions[index]
                    alive = [alive[k] for k in keep]
                attention = torch.cat([attention, attention.new_ones((len(alive), 1))], dim=1)
                step_ids = next_ids[:, None]
                step_positions = step_positions[:, -1:] + 1
        n_generated = sum(len(tokens) for tokens in generated)
        self.counters["generated_tokens"] += n_generated
        self.counters["forward_tokens"] += n_generated
        texts = []
        for tokens in generated:
            text = self.tok_decode(tokens)
            for term in until:
                if term:
                    text = text.split(term)[0]
            texts.append(text)
        return texts


def _stop_token_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}
