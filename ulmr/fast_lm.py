"""A transformers-backed lm-eval model that gives lm-eval's "hf" numbers with less compute.

Registered with lm-eval as `ulmr-fast` (the `fast` backend of `ulmr-bench eval`). Tokenisation is
lm-eval's own (`TemplateLM._encode_pair`, tokenizer defaults), so the same tokens are scored; the
work saved is pure recomputation:

- shared prefixes: the token prefixes that several requests share (a question's context, which
  TOFU scores 4-8 answers after; the chat template's system turn; a few-shot block) are computed
  once, and their keys and values copied into every row that starts with them (`_plan_prefixes`).
- log-likelihoods: each request is a row of its own after its cached prefix, so attention costs no
  more than lm-eval's; the vocabulary projection runs only at the positions whose next token is
  scored.
- generation: greedy decoding into preallocated key/value slots (`_Slots`: written in place, no
  per-step concatenation of the whole cache), prompts sorted by length into batches sized by a
  token budget rather than a row count, and rows that have stopped taken out of the batch (the
  last live row of similar length moves into the freed slot) instead of decoding padding until
  the longest row ends. A decoding step's attention reads, for each band of rows of similar
  lengths, only that band's columns (`_banded_sdpa`): short answers beside few-shot prompts do not
  attend over the long rows' masked columns.
- rolling log-likelihoods keep their per-token log-probs (`rolling_logprobs`) for the metrics that
  need them (RWKU's Min-K%), which would otherwise score the same texts again.

Every row lies in its slots as in lm-eval's own forward: its prefix, then its tokens, from column
0, no gap between (a masked gap would shift fp32 sums across SIMD lanes), and every matmul sees at
least MIN_ROWS rows. Log-likelihoods so equal the hf model's to fp32 rounding (measured on TOFU:
bit-identical in most requests), and greedy generation gives the same text.
"""

from __future__ import annotations

import contextlib
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
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ulmr.prompts import encode

# CPU BLAS (oneDNN/MKL) multiplies fewer than ~16 rows with another kernel that rounds differently;
# forwards and projections are padded to at least this many rows to round as the hf model's batches
MIN_ROWS = 16
# the attention implementation a decoding step runs under (registered at the end of this module)
BANDED_SDPA = "ulmr_banded_sdpa"


@register_model("ulmr-fast")
class FastLM(TemplateLM):
    def __init__(self, pretrained, tokenizer=None, dtype: str = "auto", device: str | None = None,
                 batch_size: int | str = 16, max_gen_toks: int = 256, generation_tokens: int = 32768,
                 score_tokens: int = 8192, prefix_min_saving: int = 16, prefix_bytes: int = 1 << 30,
                 prefix_align: int = 32, **_ignored):
        super().__init__()
        from ulmr.hardware import default_device, join_launched_processes, resolve_dtype
        from ulmr.models import cast_weights, load_model, load_tokenizer

        # under `accelerate launch` lm-eval gives each process a shard of every task's docs and
        # gathers the results on the first (see all_gather, gather_object, barrier below)
        self._rank, self._world_size, self.device_name = join_launched_processes(device or default_device())
        self._device = torch.device(self.device_name)
        self.compute_dtype = resolve_dtype(dtype, self.device_name)
        if isinstance(pretrained, str):
            self.model, self.tokenizer = load_model(pretrained, dtype=dtype, device=self.device_name)
        else:  # an in-memory model (e.g. just unlearned), scored exactly as its saved checkpoint
            # loaded in the compute dtype is (lm-eval's hf model, the reference rows): its weights cast
            # in place. fp32 weights under bf16 autocast would keep the residual stream in fp32 and
            # score differently (TOFU forget ROUGE-L 0.916 against 0.969 on 10 docs of the target).
            self.model = pretrained.to(self.device_name).eval()
            cast_weights(self.model, self.compute_dtype)
            self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(pretrained.name_or_path)
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        # a scoring batch holds rows (at most batch_size) while rows x longest row stays within this
        self.score_tokens = int(score_tokens)
        # a generation batch holds rows while their (prompt + new tokens) sum stays within this: each
        # decoding step streams every weight, so on a CPU 160 TOFU rows in one batch decode twice
        # as fast as in batches of 16; the budget bounds the KV cache (~1.5 GB for SmolLM2 in fp32)
        self.generation_tokens = int(generation_tokens)
        # a shared prefix is computed once when that saves at least this many tokens of forward
        # work (its length beyond the prefix it extends x the rows that share it, less one)
        self.prefix_min_saving = int(prefix_min_saving)
        # cached prefixes are cut to multiples of this many tokens: the CPU attention kernel takes
        # queries in blocks of 32 (64, 256 past 192, 768 queries) from the first, and a query's
        # rounding depends on its block; aligned, a row's tokens fall in the blocks they fall in
        # when the hf model computes the whole sequence, and round alike
        self.prefix_align = max(1, int(prefix_align))
        self.decoder = self.model.get_decoder()
        self.lm_head = self.model.get_output_embeddings()
        config = self.model.config
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.sliding_window = _sliding_window(config)
        self.stop_ids = stop_token_ids(self.model, self.tokenizer)
        self.eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        # transformers 5.24 renamed forward()'s past_key_values to cache; accept either release
        self.cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self.decoder_cache_arg = ("cache" if "cache" in inspect.signature(self.decoder.forward).parameters
                                  else "past_key_values")
        # requests are taken in chunks whose prompt tokens' keys and values (the most the cached
        # prefixes can hold) fit in prefix_bytes
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        bytes_per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * self.compute_dtype.itemsize
        self.prefix_tokens = max(1024, int(prefix_bytes) // bytes_per_token)
        # work done, for benchmark reports: tokens through the model, scored, generated
        self.counters = {"forward_tokens": 0, "scored_tokens": 0, "generated_tokens": 0}
        # the per-token log-probs of each text loglikelihood_rolling scored, by text: a metric that
        # needs them (RWKU's Min-K%) reads them here rather than computing the same forwards again
        self.rolling_logprobs: dict[str, list[float]] = {}

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

    # ---- the process group of a data-parallel launch, as lm-eval's evaluator uses it ---------

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor)
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj, dst: int = 0):
        if self.world_size == 1:
            return [obj]
        gathered = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj, gathered, dst=dst)
        return gathered

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    # ---- forwards over rows that start from cached prefixes ----------------------------------

    def _prefixes(self, sequences: list[list[int]]) -> list[_Prefix | None]:
        """The cached prefix each sequence starts from (None: none), computed here."""
        nodes, owners = _plan_prefixes(sequences, self.prefix_min_saving, self.prefix_align)
        done: dict[int, _Prefix] = {}
        for level in _levels(nodes):  # parents before children; a level in forwards of similar lengths
            rows = []
            for index in level:
                parent, length, source = nodes[index]
                base = done.get(parent)
                rows.append(_Row(base, sequences[source][base.length if base else 0:length]))
            self.counters["forward_tokens"] += sum(len(r.ids) for r in rows)
            for group in _length_groups([len(r.ids) for r in rows]):
                slots, _ = self._run([rows[i] for i in group], head=False, keep=0)
                for b, index in enumerate(level[i] for i in group):
                    done[index] = _Prefix(nodes[index][1], slots.row(b, nodes[index][1]))
        return [done[o] if o >= 0 else None for o in owners]

    def _check_window(self, length: int) -> None:
        if self.sliding_window is not None and length > self.sliding_window:
            from ulmr.errors import UlmrError

            raise UlmrError(f"a sequence of {length} tokens exceeds the model's sliding attention window "
                            f"({self.sliding_window}), which the fast backend does not apply: use --backend hf")

    @torch.no_grad()
    def _run(self, rows: list[_Row], head: bool, keep: int | None = None):
        """One forward over rows, each its prefix's keys and values and then its own tokens, causally.

        head=False: returns (slots, the decoder's hidden states [rows, width, hidden]), row b's
        token j at [b, j]. head=True (generation): the tokens are left-padded and the result is the
        model's logits at the last column, each row's last token. keep=None: the keys and values
        are dropped layer by layer (scoring); keep=k: the slots keep them, with room for k more
        tokens a row (generation; k=0: a prefix's own keys and values).
        """
        device = self.model.device
        batch = len(rows)
        starts = [r.prefix.length if r.prefix else 0 for r in rows]
        width = max(len(r.ids) for r in rows)
        width = max(width, -(-MIN_ROWS // batch))  # at least MIN_ROWS token rows through each matmul
        ends = [s + len(r.ids) for s, r in zip(starts, rows)]
        self._check_window(max(ends) + (keep or 0))
        columns = max(ends) + (keep or 0) + 1  # the last one is scratch: padding writes there
        input_ids = torch.full((batch, width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        write = torch.full((batch, width), columns - 1, dtype=torch.long)  # slot column of each token
        limit = torch.zeros((batch, width), dtype=torch.long)  # last column each token attends to
        for b, (row, start) in enumerate(zip(rows, starts)):
            n = len(row.ids)
            at = slice(width - n, width) if head else slice(0, n)
            input_ids[b, at] = torch.tensor(row.ids)
            write[b, at] = limit[b, at] = torch.arange(start, start + n)
        # padding attends to column 0 (a real token in every row), to keep softmax finite
        used = max(ends)
        mask = torch.arange(used)[None, None, :] <= limit[:, :, None]
        slots = _Slots([r.prefix for r in rows], columns, keep is not None)
        slots.begin(write.to(device), used)
        kwargs = {"input_ids": input_ids.to(device), "position_ids": limit.to(device),
                  "attention_mask": mask[:, None].to(device), "use_cache": True}
        if head:
            result = self.model(**kwargs, logits_to_keep=1, **{self.cache_arg: slots}).logits[:, -1]
        else:
            result = self.decoder(**kwargs, **{self.decoder_cache_arg: slots}).last_hidden_state
        slots.lengths = torch.tensor(ends, device=device)
        return slots, result

    def _chunks(self, sequences: list[list[int]]):
        """Index lists of `sequences` (sorted, so that those sharing a prefix are neighbours), each
        chunk's tokens within prefix_tokens: the cached prefixes of one chunk fit in prefix_bytes."""
        order = sorted(range(len(sequences)), key=lambda i: sequences[i])
        chunk, tokens = [], 0
        for i in order:
            if chunk and tokens + len(sequences[i]) > self.prefix_tokens:
                yield chunk
                chunk, tokens = [], 0
            chunk.append(i)
            tokens += len(sequences[i])
        if chunk:
            yield chunk

    # ---- log-likelihoods -------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, token_logprobs: list | None = None,
                              **kwargs):
        """lm-eval's (log-likelihood, greedy) of each request; token_logprobs (a list as long as the
        requests): filled with each request's per-token log-probs too."""
        contexts = []
        for _, context, continuation in requests:
            # as lm-eval's hf model: a request longer than the model's window loses context on the left
            keep = max(1, self.max_length + 1 - len(continuation))
            contexts.append(list(context[-keep:] if len(context) > keep else context))
        results: list = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="Scoring (shared prefixes)", disable=disable_tqdm)
        for chunk in self._chunks(contexts):
            # the last context token stays in the row: it predicts the first continuation token
            prefixes = self._prefixes([contexts[i][:-1] for i in chunk])
            # requests with the same context and continuation but the last token (choices " A",
            # " B", ...) share a row
            rows: dict[tuple, tuple[_Prefix | None, list[int]]] = {}
            for i, prefix in zip(chunk, prefixes):
                rows.setdefault((tuple(contexts[i]), tuple(requests[i][2][:-1])), (prefix, []))[1].append(i)
            packed = []
            for prefix, indices in rows.values():
                i = indices[0]
                start = prefix.length if prefix else 0
                ids = contexts[i][start:] + requests[i][2][:-1]
                first = len(contexts[i]) - start - 1  # the position that predicts the first target
                packed.append((_Row(prefix, ids), first, indices))
            del prefixes
            packed.sort(key=lambda p: -(len(p[0].ids) + (p[0].prefix.length if p[0].prefix else 0)))
            for batch in self._scoring_batches(packed):
                for index, answer in self._score_rows(batch, requests, token_logprobs):
                    results[index] = answer
                bar.update(sum(len(p[2]) for p in batch))
        bar.close()
        return results

    def _scoring_batches(self, packed):
        """Longest-first rows, at most batch_size a batch and within score_tokens (rows x longest)."""
        start = 0
        while start < len(packed):
            row = packed[start][0]
            longest = len(row.ids) + (row.prefix.length if row.prefix else 0)
            rows = max(1, min(self.batch_size, self.score_tokens // max(1, longest)))
            yield packed[start:start + rows]
            start += rows

    @torch.no_grad()
    def _score_rows(self, batch, requests, token_logprobs: list | None = None):
        """One forward over the batch's rows; (request index, (log-likelihood, greedy)) of each
        request they score (and into token_logprobs[index], when given, its per-token log-probs)."""
        for row, _, indices in batch:
            self.counters["forward_tokens"] += len(row.ids)
            self.counters["scored_tokens"] += sum(len(requests[i][2]) for i in indices)
        _, hidden = self._run([p[0] for p in batch], head=False)
        device = self.model.device
        rows, columns, targets, spans = [], [], [], []
        for b, (_, first, indices) in enumerate(batch):
            for i in indices:
                continuation = requests[i][2]
                spans.append((i, len(targets), len(continuation)))
                rows += [b] * len(continuation)
                columns += range(first, first + len(continuation))
                targets += continuation
        token_lp, greedy = self._token_logprobs(hidden[torch.tensor(rows, device=device),
                                                       torch.tensor(columns, device=device)],
                                                torch.tensor(targets, device=device))
        for i, start, n in spans:
            if token_logprobs is not None:
                token_logprobs[i] = token_lp[start:start + n].tolist()
            # summed as lm-eval's hf model sums them: one fp32 tensor, in order
            yield i, (float(token_lp[start:start + n].sum()), bool(greedy[start:start + n].all()))

    def _token_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = 512):
        """Log-prob of each target token and whether it is the argmax, from the hidden states that
        predict it: the vocabulary projection and log-softmax in chunks of rows, each at least
        MIN_ROWS rows (zero rows pad a short one)."""
        logprobs, greedy = [], []
        for start in range(0, len(hidden), chunk):
            part = hidden[start:start + chunk]
            n = len(part)
            if n < MIN_ROWS:
                part = torch.cat([part, part.new_zeros(MIN_ROWS - n, part.shape[1])])
            logits = self.lm_head(part)[:n].float()
            if self.softcap:
                logits = torch.tanh(logits / self.softcap) * self.softcap
            lp = F.log_softmax(logits, dim=-1)
            wanted = targets[start:start + chunk, None]
            logprobs.append(lp.gather(1, wanted)[:, 0])
            greedy.append(lp.argmax(-1) == wanted[:, 0])
        return torch.cat(logprobs), torch.cat(greedy)

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
        per_window: list = [None] * len(windows)
        texts: list[list[float]] = [[] for _ in requests]
        scored = self._loglikelihood_tokens(windows, disable_tqdm, per_window)
        for owner, (logprob, _), window in zip(owners, scored, per_window):
            totals[owner] += logprob
            texts[owner] += window
        self.rolling_logprobs.update((req.args[0], logprobs) for req, logprobs in zip(requests, texts))
        return totals

    # ---- generation ------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False):
        by_settings: dict[str, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            by_settings[json.dumps(req.args[1], sort_keys=True, default=str)].append(i)
        results: list = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="Generating (greedy)", disable=disable_tqdm)
        with _banded_attention(self.model) as banded:
            for settings_key, indices in by_settings.items():
                settings = json.loads(settings_key)
                until = handle_stop_sequences(settings.get("until"), eos=self.eos_text)
                max_new = int(settings.get("max_gen_toks", self.max_gen_toks))
                if settings.get("do_sample") or (settings.get("temperature") or 0) > 0:
                    raise ValueError("the fast backend decodes greedily only; use --backend hf for sampling")
                encoded = [self.tok_encode(requests[i].args[0])[-(self.max_length - max_new):] for i in indices]
                for chunk in self._chunks(encoded):
                    prefixes = self._prefixes([encoded[k][:-1] for k in chunk])
                    prompts = sorted(zip(chunk, prefixes), key=lambda item: -len(encoded[item[0]]))
                    texts = self._greedy([(encoded[k], prefix) for k, prefix in prompts], max_new, until, bar, banded)
                    for (k, _), text in zip(prompts, texts):
                        results[indices[k]] = text
        bar.close()
        return results

    @torch.no_grad()
    def _greedy(self, prompts: list[tuple[list[int], _Prefix | None]], max_new: int, until: list[str],
                bar=None, banded: bool = False) -> list[str]:
        """Greedy generations of the longest-first prompts, decoded together in slots.

        The slots hold as many rows as the generation token budget allows at (longest prompt +
        max_new) tokens each. Rows decode one token a step, all at once; a row that stops leaves
        its slot (its band's last row moves in: no padding is decoded), and waiting prompts take the
        freed slots, a group at a time (one forward computes their prompts), so the batch stays
        full until the prompts run out. banded (the model runs under `_banded_attention`): each
        step's rows attend in bands of similar lengths, each to its own columns.
        """
        device = self.model.device
        columns = len(prompts[0][0]) + max_new + 1  # the longest prompt and its new tokens; scratch
        slot_count = max(1, min(len(prompts), self.generation_tokens // (columns - 1)))
        slots = _Slots([None] * slot_count, columns, keep=True)
        next_ids = torch.zeros(slot_count, dtype=torch.long, device=device)
        lengths = torch.zeros(slot_count, dtype=torch.long, device=device)  # column/position of a row's next token
        host_lengths = [0] * slot_count
        generated: list[list[int]] = [[] for _ in prompts]
        alive: list[int] = []  # the prompt in each live slot, slot by slot
        waiting = 0  # prompts before this one have been admitted
        # the end-of-sequence text is caught by its token id; only other stop strings need decoding
        stop_texts = [t for t in until if t and t != self.eos_text]
        while True:
            free = slot_count - len(alive)
            if waiting < len(prompts) and (not alive or free >= min(len(prompts) - waiting,
                                                                    max(1, slot_count // 8))):
                admitted = prompts[waiting:waiting + free]
                rows = [_Row(prefix, ids[prefix.length if prefix else 0:]) for ids, prefix in admitted]
                self.counters["forward_tokens"] += sum(len(r.ids) for r in rows)
                # a forward pads its rows to the longest: one per group of similar lengths
                for group in _length_groups([len(r.ids) for r in rows]):
                    new, logits = self._run([rows[i] for i in group], head=True, keep=0)
                    first = len(alive)
                    slots.adopt(new, first)
                    at = slice(first, first + len(group))
                    next_ids[at], lengths[at] = logits.argmax(-1), new.lengths
                    host_lengths[at] = new.lengths.tolist()
                    alive += [waiting + i for i in group]
                waiting += len(rows)
            if not alive:
                break
            finished = []
            for slot, (row, token) in enumerate(zip(alive, next_ids[:len(alive)].tolist())):  # one sync a step
                generated[row].append(token)
                if (token in self.stop_ids or len(generated[row]) >= max_new
                        or (stop_texts and any(t in self.tok_decode(generated[row]) for t in stop_texts))):
                    finished.append(slot)
            if finished:  # each band's last rows fill its holes: no padding is decoded
                if bar is not None:
                    bar.update(len(finished))
                order = _close_up(host_lengths[:len(alive)], set(finished))
                moved = [(s, t) for t, s in enumerate(order) if s != t]
                if moved:
                    src = torch.tensor([s for s, _ in moved], device=device)
                    dst = torch.tensor([t for _, t in moved], device=device)
                    slots.move(src, dst, max(host_lengths[s] for s, _ in moved))
                    next_ids[dst], lengths[dst] = next_ids[src], lengths[src]
                alive = [alive[s] for s in order]
                host_lengths[:len(order)] = [host_lengths[s] for s in order]
            if not alive:
                continue
            # only the live rows decode (the hf model decodes its whole batch until its longest
            # row ends): fewer than MIN_ROWS of them may round differently from a full batch, by
            # an ulp, which a greedy argmax does not see (tests: the same text), and padding them
            # to MIN_ROWS cost a third of the decoding time on a busy 2-core CPU
            live = len(alive)
            bands = _decode_bands(host_lengths[:live]) if banded else []
            used = max(host_lengths[:live]) + 1
            step = lengths[:live, None]
            slots.begin(step, used)
            out = self.model(input_ids=next_ids[:live, None], position_ids=step,
                             attention_mask=(torch.arange(used, device=device) <= step)[:, None, None],
                             use_cache=True, logits_to_keep=1, **{self.cache_arg: slots},
                             **({"decode_bands": bands} if len(bands) > 1 else {}))
            next_ids[:live] = out.logits[:, -1].argmax(-1)
            lengths[:live] += 1
            host_lengths[:live] = [n + 1 for n in host_lengths[:live]]
            self.counters["forward_tokens"] += live
        self.counters["generated_tokens"] += sum(len(tokens) for tokens in generated)
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
    """One row of a forward: its tokens after `prefix` (cached), at the positions after it."""

    prefix: _Prefix | None
    ids: list[int]


class _Slots(DynamicCache):
    """Keys and values of a batch, per layer [rows, kv heads, columns, head dim]: a row's prefix in
    its first columns (copied from its _Prefix), its tokens after it. `begin` says, before each
    forward, the column each input token is written to, and how many columns attention reads; the
    last column is scratch, where padding writes.

    keep=False (scoring): a layer's keys and values are dropped once it has attended. keep=True:
    they stay for further forwards (generation, prefixes); `move` copies rows, `row` reads one.
    """

    def __init__(self, prefixes: list[_Prefix | None], columns: int, keep: bool):
        super().__init__()
        self.prefixes, self.columns, self.keep = prefixes, columns, keep
        self.slot_keys: dict[int, torch.Tensor] = {}
        self.slot_values: dict[int, torch.Tensor] = {}
        self.write: torch.Tensor | None = None
        self.write_rows: torch.Tensor | None = None
        self.used = 0
        self.lengths: torch.Tensor | None = None

    def begin(self, write: torch.Tensor, used: int) -> None:
        self.write, self.used = write, used
        self.write_rows = torch.arange(len(write), device=write.device)[:, None]

    def _allocate(self, layer: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (len(self.prefixes), like.shape[1], self.columns, like.shape[3])
        # zeros, not empty: a masked column still enters attention's products, and must be finite
        keys, values = like.new_zeros(shape), like.new_zeros(shape)
        by_prefix: dict[int, list[int]] = defaultdict(list)
        for b, prefix in enumerate(self.prefixes):
            if prefix is not None:
                by_prefix[id(prefix)].append(b)
        for rows in by_prefix.values():
            prefix = self.prefixes[rows[0]]
            k, v = prefix.kv[layer]
            index = torch.tensor(rows, device=like.device)
            keys[index, :, :prefix.length] = k.to(like.dtype)
            values[index, :, :prefix.length] = v.to(like.dtype)
        if self.keep:
            self.slot_keys[layer], self.slot_values[layer] = keys, values
        return keys, values

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx in self.slot_keys:
            keys, values = self.slot_keys[layer_idx], self.slot_values[layer_idx]
        else:
            keys, values = self._allocate(layer_idx, key_states)
        rows = key_states.shape[0]
        # [rows, heads, tokens, dim] into columns `write` [rows, tokens]. Indexed assignment, not
        # scatter_ along the columns: on the CPU that passes over the whole slot tensor every call,
        # which was a third of greedy decoding's time (perf/README.md)
        at = (self.write_rows, slice(None), self.write)
        keys[at] = key_states.transpose(1, 2)
        values[at] = value_states.transpose(1, 2)
        return keys[:rows, :, :self.used], values[:rows, :, :self.used]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.used

    def row(self, b: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, (keys, values) of row b's first `length` columns."""
        return [(self.slot_keys[i][b, :, :length].clone(), self.slot_values[i][b, :, :length].clone())
                for i in sorted(self.slot_keys)]

    def adopt(self, other: _Slots, first: int) -> None:
        """Copy the rows of `other` (a forward's kept slots) into rows first, first + 1, ..."""
        rows = len(other.prefixes)
        for layer in sorted(other.slot_keys):
            for mine, theirs in ((self.slot_keys, other.slot_keys), (self.slot_values, other.slot_values)):
                source = theirs[layer][:, :, :other.columns - 1]  # not their scratch column
                if layer not in mine:
                    shape = (len(self.prefixes), source.shape[1], self.columns, source.shape[3])
                    mine[layer] = source.new_zeros(shape)
                mine[layer][first:first + rows, :, :source.shape[2]] = source.to(mine[layer].dtype)

    def move(self, sources: torch.Tensor, targets: torch.Tensor, columns: int) -> None:
        """Copy rows `sources` into rows `targets` (their first `columns` columns)."""
        for store in (self.slot_keys, self.slot_values):
            for layer in store:
                store[layer][targets, :, :columns] = store[layer][sources, :, :columns]


def _plan_prefixes(sequences: list[list[int]], min_saving: int,
                   align: int = 1) -> tuple[list[tuple[int, int, int]], list[int]]:
    """Which shared token prefixes to compute once, and which one each sequence starts from.

    Walks the prefix tree of the sequences: a node (a prefix shared by at least two, cut to a
    multiple of `align` tokens) is kept when computing its tokens beyond the kept node it extends
    once, instead of in each sequence, saves at least `min_saving` tokens ((length beyond the
    parent) x (sequences - 1)). Returns the nodes as (parent node or -1, length, a sequence that
    starts with it), parents first, and for each sequence the deepest kept node it starts with
    (-1: none).
    """
    nodes: list[tuple[int, int, int]] = []
    owners = [-1] * len(sequences)
    stack = [(list(range(len(sequences))), -1, 0)]  # (sequences sharing a prefix, kept parent, its length)
    while stack:
        indices, parent, parent_length = stack.pop()
        if len(indices) < 2:
            for i in indices:
                owners[i] = parent
            continue
        shared = len(os.path.commonprefix([sequences[i] for i in indices]))
        cut = shared // align * align
        if cut > parent_length and (cut - parent_length) * (len(indices) - 1) >= min_saving:
            nodes.append((parent, cut, indices[0]))
            parent, parent_length = len(nodes) - 1, cut
        branches: dict[int, list[int]] = defaultdict(list)
        for i in indices:
            if len(sequences[i]) == shared:
                owners[i] = parent
            else:
                branches[sequences[i][shared]].append(i)
        for branch in branches.values():
            stack.append((branch, parent, parent_length))
    return nodes, owners


def _decode_bands(lengths: list[int], padding: float = 0.25) -> list[tuple[int, int, int]]:
    """A decoding step's bands: runs of neighbouring slots whose lengths are each at least
    (1 - padding) of their run's longest, each (first slot, end slot, columns its rows attend to).
    The slots lie about longest first, so the runs are few."""
    runs: list[list[int]] = []  # [first, end, shortest, longest]
    for slot, n in enumerate(lengths):
        run = runs[-1] if runs else None
        if run and min(run[2], n) >= (1 - padding) * max(run[3], n):
            run[1], run[2], run[3] = slot + 1, min(run[2], n), max(run[3], n)
        else:
            runs.append([slot, slot + 1, n, n])
    return [(first, end, longest + 1) for first, end, _, longest in runs]


def _close_up(lengths: list[int], done: set[int]) -> list[int]:
    """The live slots, position by position, after the slots `done` leave: within each band of
    `_decode_bands`, the band's last rows fill its holes, the bands in order. Rows of similar
    lengths stay neighbours (slots are admitted longest first), at one move a hole and band."""
    order: list[int] = []
    for first, end, _ in _decode_bands(lengths):
        kept = [s for s in range(first, end) if s not in done]
        span = range(len(order), len(order) + len(kept))
        staying = {s for s in kept if s in span}
        movers = iter(s for s in kept if s not in staying)
        order += [p if p in staying else next(movers) for p in span]
    return order


@contextlib.contextmanager
def _banded_attention(model):
    """The model attends with `_banded_sdpa` inside (yields True), where it attends with sdpa;
    other implementations (eager, flash) are left as they are (yields False)."""
    config = model.config
    if config._attn_implementation != "sdpa" or getattr(config, "sub_configs", None):
        yield False
        return
    config._attn_implementation = BANDED_SDPA
    try:
        yield True
    finally:
        config._attn_implementation = "sdpa"


def _banded_sdpa(module, query, key, value, attention_mask, decode_bands=None, **kwargs):
    """transformers' sdpa attention; given a decoding step's `decode_bands` (`_decode_bands`), each
    band's rows attend to that band's columns only. The columns cut off are masked for those rows,
    so their share of a softmax is exactly zero: a row's attention is its band's, without the
    reads and products of the longer rows' columns (at RWKU's few-shot prompts beside short
    answers, half of a step's attention)."""
    if not decode_bands:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outputs = [sdpa_attention_forward(module, query[first:end], key[first:end, :, :columns],
                                      value[first:end, :, :columns], attention_mask[first:end, ..., :columns],
                                      **kwargs)[0]
               for first, end, columns in decode_bands]
    return torch.cat(outputs), None


AttentionInterface.register(BANDED_SDPA, _banded_sdpa)


def _length_groups(lengths: list[int], padding: float = 0.25) -> list[list[int]]:
    """Indices of `lengths`, longest first, cut into groups whose rows are each at least
    (1 - padding) of their group's longest: padded to it in one forward, a group computes at most
    a `padding` share of padding. (One forward over RWKU's BBH and AlpacaEval prompts, 26 to 1,024
    tokens after their shared few-shot prefixes, computed 87 % padding.)"""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and lengths[i] >= (1 - padding) * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


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


def _sliding_window(config) -> int | None:
    """The attention window of a model whose layers (some or all) attend to a sliding window."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    types = getattr(config, "layer_types", None)
    if types and all(t == "full_attention" for t in types):
        return None
    return int(window)


def stop_token_ids(model, tokenizer) -> set[int]:
    """Ids that end a reply: the tokenizer's EOS and the generation config's (one id or a list)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}
