"""Batched, seeded text generation with a progress bar: how ULMR's rewriter LLM writes rewrites and
refusals."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ulmr.prompts import PromptTemplate, render_prompt


@dataclass
class TextGenerator:
    """A causal LM asked one instruction per prompt; returns only the newly generated text.
    A reply cut off by max_new_tokens keeps its complete lines only (possibly none), or with
    cut="sentences" its complete sentences (a made-up answer that runs on is still one).

    temperature: 0 = greedy decoding; above 0 = sampling at that temperature (seeded).
    """

    model: object
    tokenizer: object
    temperature: float = 0.7
    max_new_tokens: int = 64
    batch_size: int = 16
    seed: int = 0

    def __call__(self, instructions: list[str], desc: str, cut: str = "lines") -> list[str]:
        import torch
        from tqdm.auto import tqdm

        from ulmr.fast_lm import stop_token_ids

        # The rewriter is prompted as an assistant: its chat template when it has one, else tags.
        template = PromptTemplate("chat" if getattr(self.tokenizer, "chat_template", None) else "tags")
        prompts = [render_prompt(self.tokenizer, template, text) for text in instructions]
        options = {"max_new_tokens": self.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id,
                   "do_sample": self.temperature > 0}
        if self.temperature > 0:
            options.update(temperature=self.temperature, top_p=1.0, top_k=0)
        stop_ids = torch.tensor(sorted(stop_token_ids(self.model, self.tokenizer)), device=self.model.device)
        bos = self.tokenizer.bos_token
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"  # decoder-only batches must end where generation starts
        torch.manual_seed(self.seed)
        outputs = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in tqdm(range(0, len(prompts), self.batch_size), desc=desc, unit="batch"):
                batch = prompts[start:start + self.batch_size]
                enc = self.tokenizer(batch, return_tensors="pt", padding=True,
                                     add_special_tokens=not (bos and batch[0].startswith(bos)))
                enc = enc.to(self.model.device)
                with torch.no_grad():
                    out = self.model.generate(**enc, **options)
                new = out[:, enc["input_ids"].shape[1]:]
                finished = torch.isin(new, stop_ids).any(dim=1).tolist()
                for text, done in zip(self.tokenizer.batch_decode(new, skip_special_tokens=True), finished):
                    outputs.append(text if done else _complete_part(text, cut))
        finally:
            self.tokenizer.padding_side = side
            self.model.train(was_training)
        return outputs


def _complete_part(text: str, cut: str) -> str:
    """What is complete in a reply cut off mid-way: its lines before the last line break, or with
    cut="sentences" everything up to the last sentence end (. ! ? then a space or a line break)."""
    if cut == "sentences":
        ends = [m.end() for m in re.finditer(r"[.!?][\"')\]]*(?=\s)", text)]
        return text[:ends[-1]] if ends else ""
    return text.rpartition("\n")[0]
