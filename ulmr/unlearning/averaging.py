"""Parameter averaging, the generic part: theta = alpha * theta_unlearned + (1 - alpha) * theta_original.

Tensor by tensor in fp32 on CPU, after checking that both hold the same tensor names and shapes.
Weights are read with `ulmr.unlearning.training.full_state_dict`, which adds LoRA deltas in, so full
fine-tuning and LoRA average the same way. `soup` is the uniform average of several checkpoints of
one training trajectory. ULMR's step 4 (ulmr/method/method.py) and the `average_alpha` post-step of
every loss-based method (ulmr.unlearning.training.LossUnlearner) both use these.
"""

from __future__ import annotations

import torch

from ulmr.errors import UlmrError

StateDict = dict[str, torch.Tensor]


def check_compatible(first: StateDict, second: StateDict, what: str) -> None:
    """Same tensor names and shapes, or a one-line UlmrError naming the first difference."""
    missing = sorted(set(first) ^ set(second))
    if missing:
        raise UlmrError(f"cannot average {what}: tensor {missing[0]!r} is in only one of them "
                        f"({len(missing)} names differ); average checkpoints of the same architecture")
    for name, tensor in first.items():
        if tensor.shape != second[name].shape:
            raise UlmrError(f"cannot average {what}: tensor {name!r} has shape {tuple(tensor.shape)} vs "
                            f"{tuple(second[name].shape)}; average checkpoints of the same architecture")


def interpolate(unlearned: StateDict, original: StateDict, alpha: float) -> StateDict:
    """alpha * unlearned + (1 - alpha) * original, tensor by tensor in fp32 (exact at 0 and 1)."""
    if not 0.0 <= alpha <= 1.0:
        raise UlmrError(f"averaging alpha={alpha} is out of range: it must lie in [0, 1]")
    check_compatible(unlearned, original, "the unlearned and the original model")
    return {name: _lerp(original[name], t, alpha) for name, t in unlearned.items()}


def soup(checkpoints: list[StateDict]) -> StateDict:
    """The uniform average of checkpoints (same names and shapes), in fp32."""
    if not checkpoints:
        raise UlmrError("cannot make a soup of no checkpoints: set soup to 1 or more")
    for i, other in enumerate(checkpoints[1:], start=2):
        check_compatible(checkpoints[0], other, f"soup checkpoints 1 and {i}")
    return {name: torch.stack([c[name].float() for c in checkpoints]).mean(0) if t.is_floating_point() else t
            for name, t in checkpoints[0].items()}


def load_weights(model, state: StateDict) -> None:
    """Copy `state` into a plain (non-PEFT) `model`, cast to each tensor's dtype and device."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        raise UlmrError("cannot load averaged weights into a model with LoRA adapters: merge them first "
                        "(model.merge_and_unload())")
    own = model.state_dict()
    check_compatible(own, state, "the model and the averaged weights")
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(state[name])


class OnDisk:
    """A state dict held in a temporary safetensors file (under TMPDIR) instead of memory, until
    `load()` reads it back, bit for bit, and deletes the file: the original weights wait there while
    training runs, which on the embedded 135M model takes its 0.54 GB fp32 copy off the loop's peak."""

    def __init__(self, state: StateDict):
        import tempfile
        from pathlib import Path

        from safetensors.torch import save_file

        self._folder = tempfile.TemporaryDirectory(prefix="ulmr-weights-")
        self._path = Path(self._folder.name) / "weights.safetensors"
        save_file({name: t.contiguous() for name, t in state.items()}, str(self._path))

    def load(self) -> StateDict:
        from safetensors.torch import load_file

        state = load_file(str(self._path))
        self._folder.cleanup()
        return state


def _lerp(original: torch.Tensor, unlearned: torch.Tensor, alpha: float) -> torch.Tensor:
    if not unlearned.is_floating_point():  # integer buffers are not parameters: keep them
        return unlearned.clone()
    return alpha * unlearned.float() + (1.0 - alpha) * original.float()
