"""A transformers-backed lm-eval model that gives lm-eval's "hf" numbers with less compute.

Registered with lm-eval as `ulmr-fast` (the `fast` backend of `ulmr-bench eval`). Tokenisation is
lm-eval's own (`TemplateLM._encode_pair`, tokenizer defaults), so the same tokens are scored; the
work saved is pure recomputation:

- shared prefixes: the token prefixes that several prompts or contexts of one call share (the chat
  template's system turn, a few-shot block) are computed once and their keys and values copied into
  every row that starts with them (`_plan_prefixes`, `_PrefixKV`).
- log-likelihoods: requests that share a context (TOFU scores 4-8 answers per question) are packed
  into one row, the context once and every continuation after it, with a tree-shaped attention
  mask and restarted position ids, so the context is computed once, while packing pays for its
  longer attention (`_packing_pays`); the vocabulary projection runs only at the positions whose
  next token is scored.
- generation: greedy decoding into preallocated key/value slots (`_Slots`: written in place, no
  per-step concatenation of the whole cache), prompts sorted by length into batches sized by a
  token budget rather than a row count, and rows that have stopped swapped out of the batch (the
  last live row moves into the freed slot) instead of decoding padding until the longest row ends.

Outputs equal the hf model's up to floating-point summation order: the same tokens, positions and
attention pattern, only laid out differently in memory.
"""

from __future__ import annotations

import inspect
import json
import os
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm
from transformers import DynamicCache

from ulmr.prompts import encode


@register_model("ulmr-fast")
class FastLM(TemplateLM):
    def __init__(self, pretrained, tokenizer=None, dtype: str = "auto", device: str | None = None,
                 batch_size: int | str = 16, max_gen_toks: int = 256, row_tokens: int = 1024,
                 generation_tokens: int = 32768, score_tokens: int = 8192, prefix_min_saving: int = 32,
                 **_ignored):
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
        # autocast only where the weights are not already in the compute dtype: lm-eval's hf model
        # runs bf16 weights without autocast, and autocast would move some ops to fp32
        self.autocast = (self.compute_dtype != torch.float32
                         and next(self.model.parameters()).dtype != self.compute_dtype)
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.row_tokens = int(row_tokens)  # longest packed scoring row (attention is quadratic in it)
        # a scoring batch holds rows (at most batch_size) while rows x longest row stays within this
        self.score_tokens = int(score_tokens)
        # a generation batch holds rows while their (prompt + new tokens) sum stays within this: each
        # decoding step streams every weight, so on a CPU 160 TOFU rows in one batch decode twice
        # as fast as in batches of 16; the budget bounds the KV cache (~1.5 GB for SmolLM2 in fp32)
        self.generation_tokens = int(generation_tokens)
        # a shared prefix is computed once when that saves at least this many tokens of forward
        # work (its length beyond the prefix it extends x the rows that share it, less one)
        self.prefix_min_saving = int(prefix_min_saving)
        self.decoder = self.model.get_decoder()
        self.lm_head = self.model.get_output_embeddings()
        config = self.model.config
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.sliding_window = _sliding_window(config)
        self.stop_ids = _stop_token_ids(self.model, self.tokenizer)
        self.eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        # transformers 5.24 renamed forward()'s past_key_values to cache; accept either release
        self.cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self.decoder_cache_arg = ("cache" if "cache" in inspect.signature(self.decoder.forward).parameters
                                  else "past_key_values")
        # attention costs 4 x heads x head_dim FLOPs a layer for each (query, key) pair, the matmuls
        # 2 x their weights a token: a row of n tokens costs ~ n + n^2 / attention_ratio token-units
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        linear = sum(m.weight.numel() for m in self.decoder.modules() if isinstance(m, torch.nn.Linear))
        self.attention_ratio = max(1.0, linear / (2 * heads * head_dim * config.num_hidden_layers))
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

    # ---- the forward pass over rows that start from cached prefixes --------------------------

    def _autocast(self):
        device = self.model.device
        return torch.autocast(device_type=device.type, dtype=self.compute_dtype, enabled=self.autocast)

    def _prefixes(self, sequences: list[list[int]]) -> tuple[list[_Prefix | None], int]:
        """The cached prefix of each sequence (None: none), computed here; and the tokens it took."""
        nodes, owners = _plan_prefixes(sequences, self.prefix_min_saving)
        done: dict[int, _Prefix] = {}
        tokens = 0
        for level in _levels(nodes):  # parents before children, one forward a level
            rows = []
            for index in level:
                parent, length, source = nodes[index]
                base = done.get(parent)
                rows.append(_Row(base, sequences[source][base.length if base else 0:length]))
            slots, _ = self._run(rows, keep=True, head=False)
            for b, (index, row) in enumerate(zip(level, rows)):
                done[index] = _Prefix(nodes[index][1], slots.row_kv(b, row.prefix.length if row.prefix else 0,
                                                                    len(row.ids)))
                tokens += len(row.ids)
        return [done[o] if o >= 0 else None for o in owners], tokens

    def _check_window(self, length: int) -> None:
        if self.sliding_window is not None and length > self.sliding_window:
            from ulmr.errors import UlmrError

            raise UlmrError(f"a sequence of {length} tokens exceeds the model's sliding attention window "
                            f"({self.sliding_window}), which the fast backend does not apply: use --backend hf")

    @torch.no_grad()
    def _run(self, rows: list[_Row], keep: bool, head: bool, extra_columns: int = 0, left_pad: bool = False):
        """One forward over rows, each attending to its cached prefix and then to its own tokens
        (causally, and within its segment: see _Row). Returns the slots (their keys and values,
        kept for `extra_columns` more tokens when `keep`) and the decoder's hidden states, or the
        model's logits at each row's last column when `head` (generation: `left_pad` then puts
        every row's last token in the last column)."""
        device = self.model.device
        batch = len(rows)
        prefix_lengths = [r.prefix.length if r.prefix else 0 for r in rows]
        prefix_columns = max(prefix_lengths)
        width = max(len(r.ids) for r in rows)
        self._check_window(max(p + len(r.ids) for p, r in zip(prefix_lengths, rows)) + extra_columns)
        input_ids = torch.full((batch, width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        position_ids = torch.zeros((batch, width), dtype=torch.long)
        segments = torch.full((batch, width), -1, dtype=torch.long)  # -1: padding
        for b, (row, start) in enumerate(zip(rows, prefix_lengths)):
            n = len(row.ids)
            cols = slice(width - n, width) if left_pad else slice(0, n)
            input_ids[b, cols] = torch.tensor(row.ids)
            position_ids[b, cols] = (torch.tensor(row.positions) if row.positions is not None
                                     else torch.arange(start, start + n))
            segments[b, cols] = torch.tensor(row.segments) if row.segments is not None else 0
        # a token sees its prefix, then earlier tokens of the shared part (segment 0) and of its own
        # segment; padding sees itself, to keep softmax finite
        real = segments >= 0
        own = torch.ones(width, width, dtype=torch.bool).tril()[None] & real[:, None, :] & (
            (segments[:, None, :] == 0) | (segments[:, None, :] == segments[:, :, None]))
        own |= torch.eye(width, dtype=torch.bool)[None] & ~real[:, :, None]
        prefix_valid = torch.arange(prefix_columns)[None, :] < torch.tensor(prefix_lengths)[:, None]
        mask = torch.cat([prefix_valid[:, None, :].expand(batch, width, prefix_columns), own], dim=-1)
        slots = _Slots(rows, prefix_columns, width + extra_columns if keep else 0)
        with self._autocast():
            kwargs = {"input_ids": input_ids.to(device), "position_ids": position_ids.to(device),
                      "attention_mask": mask[:, None].to(device), "use_cache": True}
            if head:
                out = self.model(**kwargs, logits_to_keep=1, **{self.cache_arg: slots})
                result = out.logits[:, -1]
            else:
                result = self.decoder(**kwargs, **{self.decoder_cache_arg: slots}).last_hidden_state
        slots.column = prefix_columns + width
        slots.valid = torch.cat([prefix_valid, real, torch.zeros(batch, extra_columns, dtype=torch.bool)], 1)
        slots.valid = slots.valid.to(device)
        return slots, result

    # ---- log-likelihoods -------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        groups: dict[tuple, list[int]] = defaultdict(list)  # context tokens -> request indices
        for i, (_, context, continuation) in enumerate(requests):
            # as lm-eval's hf model: a request longer than the model's window loses context on the left
            keep = self.max_length + 1 - len(continuation)
            groups[tuple(context[-keep:] if len(context) > keep else context)].append(i)
        contexts = list(groups)
        # the last context token stays in the row: it predicts the first continuation token
        prefixes, prefix_tokens = self._prefixes([list(c[:-1]) for c in contexts])
        self.counters["forward_tokens"] += prefix_tokens
        packed = []
        for context, prefix in zip(contexts, prefixes):
            start = prefix.length if prefix else 0
            for chunk in self._row_chunks(len(context) - start, groups[context], requests):
                packed.append(self._packed_row(list(context), prefix, [requests[i][2] for i in chunk], chunk))
        packed.sort(key=lambda p: -len(p[0].ids))
        results: list = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="Scoring (shared contexts)", disable=disable_tqdm)
        for batch in self._scoring_batches(packed):
            for (logprob, greedy), index in zip(self._score_packed(batch), (i for p in batch for i in p[3])):
                results[index] = (logprob, greedy)
            bar.update(sum(len(p[3]) for p in batch))
        bar.close()
        return results

    def _row_chunks(self, own_context: int, indices, requests):
        """Split one context's continuations into rows: a continuation joins the row while that
        costs less than a row of its own (which recomputes the context's `own_context` uncached
        tokens) and the row stays within `row_tokens`.

        Packing pays off by not repeating the context, but attention over a row is quadratic in its
        length: rolling windows all share the one-token BOS context, and packing a whole MIA set
        into one row once cost 8 GiB and ran at 17 % of the FLOP floor.
        """
        chunk, length = [], own_context
        for i in indices:
            body = len(requests[i][2]) - 1
            if chunk and (length + body > self.row_tokens or not _packing_pays(
                    length, body, own_context, self.attention_ratio)):
                yield chunk
                chunk, length = [], own_context
            chunk.append(i)
            length += body
        yield chunk

    def _packed_row(self, context, prefix, continuations, indices):
        """A row [context after its prefix | cont_1[:-1] | cont_2[:-1] | ...], where each token is
        predicted, and its targets."""
        start = prefix.length if prefix else 0
        ids, positions, segments = context[start:], list(range(start, len(context))), [0] * (len(context) - start)
        predict_at, targets = [], []
        for j, cont in enumerate(continuations, start=1):
            first = len(ids)
            body = cont[:-1]
            ids += body
            positions += range(len(context), len(context) + len(body))
            segments += [j] * len(body)
            # the first token is predicted from the last context position, the rest from the body
            predict_at.append([len(context) - start - 1] + list(range(first, first + len(body))))
            targets.append(cont)
        return _Row(prefix, ids, positions, segments), predict_at, targets, indices

    def _scoring_batches(self, packed):
        """Longest-first rows, at most batch_size a batch and within score_tokens (rows x longest)."""
        start = 0
        while start < len(packed):
            longest = len(packed[start][0].ids) + (packed[start][0].prefix.length if packed[start][0].prefix else 0)
            rows = max(1, min(self.batch_size, self.score_tokens // max(1, longest)))
            yield packed[start:start + rows]
            start += rows

    @torch.no_grad()
    def _score_packed(self, batch):
        """One forward over packed rows; (log-likelihood, greedy) of each continuation."""
        rows = [p[0] for p in batch]
        for p in batch:
            self.counters["forward_tokens"] += len(p[0].ids)
            self.counters["scored_tokens"] += sum(len(c) for c in p[2])
        _, hidden = self._run(rows, keep=False, head=False)
        device = self.model.device
        out = []
        with self._autocast():
            for b, (_, predict_at, targets, _) in enumerate(batch):
                flat_at = [p for pred in predict_at for p in pred]
                logits = self.lm_head(hidden[b, flat_at]).float()
                if self.softcap:
                    logits = torch.tanh(logits / self.softcap) * self.softcap
                logprobs = F.log_softmax(logits, dim=-1)
                flat_targets = torch.tensor([t for cont in targets for t in cont], device=device)
                token_lp = logprobs.gather(1, flat_targets[:, None])[:, 0]
                greedy = logprobs.argmax(-1) == flat_targets
                offset = 0
                for cont in targets:
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
            prefixes, prefix_tokens = self._prefixes([ids[:-1] for _, ids in encoded])
            self.counters["forward_tokens"] += prefix_tokens
            prompts = sorted(((i, ids, prefix) for (i, ids), prefix in zip(encoded, prefixes)),
                             key=lambda item: -len(item[1]))
            for batch in self._generation_batches(prompts, max_new):
                texts = self._greedy_batch([(ids, prefix) for _, ids, prefix in batch], max_new, until)
                for (i, _, _), text in zip(batch, texts):
                    results[i] = text
                bar.update(len(batch))
            del prefixes, prompts
        bar.close()
        return results

    def _generation_batches(self, prompts, max_new: int):
        """Consecutive runs of the longest-first prompts, each within the generation token budget
        (rows x their key/value columns: prefix + rest of the prompt + max_new); at least one row."""
        start = 0
        while start < len(prompts):
            end, prefix_columns, own_columns = start, 0, 0
            while end < len(prompts):
                _, ids, prefix = prompts[end]
                p = prefix.length if prefix else 0
                columns = max(prefix_columns, p) + max(own_columns, len(ids) - p) + max_new
                if end > start and (end + 1 - start) * columns > self.generation_tokens:
                    break
                prefix_columns, own_columns, end = max(prefix_columns, p), max(own_columns, len(ids) - p), end + 1
            yield prompts[start:end]
            start = end

    @torch.no_grad()
    def _greedy_batch(self, prompts: list[tuple[list[int], _Prefix | None]], max_new: int,
                      until: list[str]) -> list[str]:
        device = self.model.device
        rows = [_Row(prefix, ids[prefix.length if prefix else 0:]) for ids, prefix in prompts]
        self.counters["forward_tokens"] += sum(len(r.ids) for r in rows)
        slots, logits = self._run(rows, keep=True, head=True, extra_columns=max_new, left_pad=True)
        next_ids = logits.argmax(-1)
        positions = torch.tensor([len(ids) for ids, _ in prompts], device=device)
        generated: list[list[int]] = [[] for _ in prompts]
        alive = list(range(len(prompts)))  # the prompt in each live slot, slot by slot
        # the end-of-sequence text is caught by its token id; only other stop strings need decoding
        stop_texts = [t for t in until if t and t != self.eos_text]
        with self._autocast():
            for _ in range(max_new):
                finished = []
                for slot, (row, token) in enumerate(zip(alive, next_ids.tolist())):  # one device sync a step
                    generated[row].append(token)
                    if (token in self.stop_ids or len(generated[row]) >= max_new
                            or (stop_texts and any(t in self.tok_decode(generated[row]) for t in stop_texts))):
                        finished.append(slot)
                if len(finished) == len(alive):
                    break
                if finished:  # the last live rows move into the freed slots: no padding is decoded
                    live = len(alive) - len(finished)
                    done = set(finished)
                    holes = [s for s in finished if s < live]
                    movers = [s for s in range(live, len(alive)) if s not in done]
                    if holes:
                        slots.move(movers, holes)
                        src, dst = torch.tensor(movers, device=device), torch.tensor(holes, device=device)
                        next_ids[dst], positions[dst] = next_ids[src], positions[src]
                        for s, h in zip(movers, holes):
                            alive[h] = alive[s]
                    alive = alive[:live]
                    next_ids, positions = next_ids[:live], positions[:live]
                n = len(alive)
                column = slots.column
                slots.valid[:n, column] = True
                out = self.model(input_ids=next_ids[:, None], position_ids=positions[:, None],
                                 attention_mask=slots.valid[:n, None, None, :column + 1], use_cache=True,
                                 logits_to_keep=1, **{self.cache_arg: slots})
                slots.column += 1
                positions = positions + 1
                next_ids = out.logits[:, -1].argmax(-1)
        n_generated = sum(len(tokens) for tokens in generated)
        self.counters["generated_tokens"] += n_generated
        self.counters["forward_tokens"] += n_generated - len(prompts)  # the last token is not fed back
        texts = []
        for tokens in generated:
            text = self.tok_decode(tokens)
            for term in until:
                if term:
                    text = text.split(term)[0]
            texts.append(text)
        return texts


# ---- shared prefixes and key/value slots ---------------------------------------------------------


@dataclass
class _Prefix:
    """The keys and values of a token prefix, per layer, each [kv heads, length, head dim]."""

    length: int
    kv: list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _Row:
    """One row of a forward: the tokens after `prefix` (cached), their positions (default: right
    after the prefix) and segments (packed scoring: 0 the shared context, j the j-th continuation,
    which sees the context and itself; default all 0: plain causal)."""

    prefix: _Prefix | None
    ids: list[int]
    positions: list[int] | None = None
    segments: list[int] | None = None


class _Slots(DynamicCache):
    """Keys and values of a batch, per layer [rows, kv heads, columns, head dim]: each row's prefix
    in the first `prefix_columns` (copied from its _Prefix), then the tokens the forwards write at
    `column`, in place.

    With `own_columns == 0` nothing is kept: each layer sees its prefix and the forward's own keys
    (scoring). Otherwise the slots have room for `own_columns` tokens after the prefix columns
    (generation); `valid` marks the columns each row attends to, and `move` swaps rows.
    """

    def __init__(self, rows: list[_Row], prefix_columns: int, own_columns: int):
        super().__init__()
        self.source = [r.prefix for r in rows]
        self.prefix_columns, self.column, self.total = prefix_columns, prefix_columns, prefix_columns + own_columns
        self.keep = own_columns > 0
        self.slot_keys: dict[int, torch.Tensor] = {}
        self.slot_values: dict[int, torch.Tensor] = {}
        self.valid: torch.Tensor | None = None

    def _allocate(self, layer: int, like: torch.Tensor) -> None:
        shape = (len(self.source), like.shape[1], self.total if self.keep else self.prefix_columns, like.shape[3])
        # zeros, not empty: a masked column still enters attention's products, and must be finite
        keys, values = like.new_zeros(shape), like.new_zeros(shape)
        by_prefix: dict[int, list[int]] = defaultdict(list)
        for b, prefix in enumerate(self.source):
            if prefix is not None:
                by_prefix[id(prefix)].append(b)
        for rows in by_prefix.values():
            prefix = self.source[rows[0]]
            k, v = prefix.kv[layer]
            index = torch.tensor(rows, device=like.device)
            keys[index, :, :prefix.length] = k.to(like.dtype)
            values[index, :, :prefix.length] = v.to(like.dtype)
        self.slot_keys[layer], self.slot_values[layer] = keys, values

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx not in self.slot_keys:
            self._allocate(layer_idx, key_states)
        keys, values = self.slot_keys[layer_idx], self.slot_values[layer_idx]
        rows, new = key_states.shape[0], key_states.shape[2]
        if not self.keep:
            if self.prefix_columns == 0:
                return key_states, value_states
            return torch.cat([keys, key_states], dim=2), torch.cat([values, value_states], dim=2)
        end = self.column + new
        keys[:rows, :, self.column:end] = key_states
        values[:rows, :, self.column:end] = value_states
        return keys[:rows, :, :end], values[:rows, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.column

    def row_kv(self, row: int, prefix_length: int, own_length: int):
        """Per layer, (keys, values) of one row's prefix followed by its first `own_length` tokens."""
        own = slice(self.prefix_columns, self.prefix_columns + own_length)
        return [(torch.cat([k[row, :, :prefix_length], k[row, :, own]], 1),
                 torch.cat([v[row, :, :prefix_length], v[row, :, own]], 1))
                for k, v in ((self.slot_keys[i], self.slot_values[i]) for i in sorted(self.slot_keys))]

    def move(self, sources: list[int], targets: list[int]) -> None:
        """Copy rows `sources` into rows `targets` (the columns written so far)."""
        device = self.valid.device
        src, dst = torch.tensor(sources, device=device), torch.tensor(targets, device=device)
        for layer in self.slot_keys:
            for store in (self.slot_keys, self.slot_values):
                store[layer][dst, :, :self.column] = store[layer][src, :, :self.column]
        self.valid[dst] = self.valid[src]


def _plan_prefixes(sequences: list[list[int]], min_saving: int) -> tuple[list[tuple[int, int, int]], list[int]]:
    """Which shared token prefixes to compute once, and which one each sequence starts from.

    Walks the prefix tree of the sequences: a node (a prefix shared by at least two) is kept when
    computing its tokens beyond the kept node it extends once, instead of in each sequence, saves
    at least `min_saving` tokens ((length beyond the parent) x (sequences - 1)). Returns the nodes
    as (parent node or -1, length, a sequence that starts with it), parents first, and for each
    sequence the deepest kept node it starts with (-1: none).
    """
    nodes: list[tuple[int, int, int]] = []
    owners = [-1] * len(sequences)
    stack = [(list(range(len(sequences))), -1, 0, 0)]  # (sequences, kept parent, its length, shared so far)
    while stack:
        indices, parent, parent_length, depth = stack.pop()
        if len(indices) < 2:
            for i in indices:
                owners[i] = parent
            continue
        shared = len(os.path.commonprefix([sequences[i] for i in indices]))
        if shared > parent_length and (shared - parent_length) * (len(indices) - 1) >= min_saving:
            nodes.append((parent, shared, indices[0]))
            parent, parent_length = len(nodes) - 1, shared
        branches: dict[int, list[int]] = defaultdict(list)
        for i in indices:
            if len(sequences[i]) == shared:
                owners[i] = parent
            else:
                branches[sequences[i][shared]].append(i)
        for branch in branches.values():
            stack.append((branch, parent, parent_length, shared + 1))
    return nodes, owners


def _levels(nodes: list[tuple[int, int, int]]) -> list[list[int]]:
    """Node indices by depth in the kept-prefix tree (parents precede their children in `nodes`)."""
    depth: list[int] = []
    levels: list[list[int]] = []
    for index, (parent, _, _) in enumerate(nodes):
        depth.append(depth[parent] + 1 if parent >= 0 else 0)
        if depth[-1] == len(levels):
            levels.append([])
        levels[depth[-1]].append(index)
    return levels


def _packing_pays(length: int, body: int, own_context: int, attention_ratio: float) -> bool:
    """Whether a continuation of `body` tokens costs less appended to a row of `length` tokens than
    in a row of its own after the `own_context` context tokens (cost: tokens + tokens^2 / ratio)."""
    appended = body + ((length + body) ** 2 - length ** 2) / attention_ratio
    alone = own_context + body + (own_context + body) ** 2 / attention_ratio
    return appended <= alone


def _sliding_window(config) -> int | None:
    """The attention window of a model whose layers (some or all) attend to a sliding window."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    types = getattr(config, "layer_types", None)
    if types and all(t == "full_attention" for t in types):
        return None
    return int(window)


def _stop_token_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}
