"""ULMR step 4: parameter averaging, soups, and the automatic choice of alpha."""

import pytest
import torch

from ulmr.errors import UlmrError
from ulmr.method.averaging import choose_alpha, interpolate, load_weights, soup
from ulmr.unlearning.training import full_state_dict


def state(w, b, step=3):
    return {"w": torch.tensor(w, dtype=torch.float32), "b": torch.tensor(b, dtype=torch.bfloat16),
            "step": torch.tensor(step)}


def test_interpolation_is_exact_at_known_points():
    original, unlearned = state([[1.0, 2.0], [3.0, 4.0]], [0.5]), state([[3.0, 6.0], [-1.0, 0.0]], [1.5])
    assert torch.equal(interpolate(unlearned, original, 0.0)["w"], original["w"])
    assert torch.equal(interpolate(unlearned, original, 1.0)["w"], unlearned["w"])
    half = interpolate(unlearned, original, 0.5)
    assert torch.equal(half["w"], torch.tensor([[2.0, 4.0], [1.0, 2.0]]))
    assert half["b"].dtype == torch.float32 and torch.equal(half["b"], torch.tensor([1.0]))  # fp32 result
    assert torch.equal(half["step"], torch.tensor(3))  # integer buffers are kept, not averaged
    with pytest.raises(UlmrError, match=r"alpha=1.5 is out of range"):
        interpolate(unlearned, original, 1.5)


def test_soup_is_the_uniform_mean():
    mixed = soup([state([1.0, 2.0], [0.0]), state([3.0, 4.0], [1.0]), state([5.0, 9.0], [2.0])])
    assert torch.equal(mixed["w"], torch.tensor([3.0, 5.0])) and torch.equal(mixed["b"], torch.tensor([1.0]))
    with pytest.raises(UlmrError, match="no checkpoints"):
        soup([])


@pytest.mark.parametrize("other, message", [
    ({"w": torch.zeros(2, 2), "bias": torch.zeros(1)}, r"tensor 'b' is in only one of them"),
    ({"w": torch.zeros(2, 3), "b": torch.zeros(1), "step": torch.tensor(3)},
     r"tensor 'w' has shape \(2, 2\) vs \(2, 3\)"),
])
def test_mismatched_checkpoints_are_refused_in_one_line(other, message):
    with pytest.raises(UlmrError, match=message) as error:
        interpolate(state([[1.0, 2.0], [3.0, 4.0]], [0.5]), other, 0.5)
    assert "\n" not in str(error.value)
    with pytest.raises(UlmrError, match=message):
        soup([state([[1.0, 2.0], [3.0, 4.0]], [0.5]), other])


def test_lora_weights_average_like_full_weights(tiny):
    """LoRA weights are read merged under the plain names, so they average like full weights."""
    from peft import LoraConfig, get_peft_model

    model, _ = tiny
    original = full_state_dict(model)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    unlearned = full_state_dict(peft_model)
    assert set(unlearned) == set(original)
    with pytest.raises(UlmrError, match="merge them first"):
        load_weights(peft_model, original)
    merged = peft_model.merge_and_unload()
    assert torch.allclose(full_state_dict(merged)["model.layers.0.self_attn.q_proj.weight"],
                          unlearned["model.layers.0.self_attn.q_proj.weight"], atol=1e-6)
    load_weights(merged, interpolate(unlearned, original, 0.0))
    assert all(torch.equal(t, original[name]) for name, t in full_state_dict(merged).items())


def test_auto_alpha_picks_the_smallest_alpha_that_forgets_and_keeps_retain():
    # alpha -> (forget, retain) held-out scores; the original model scores (1.0, 1.0).
    table = {0.25: (0.8, 0.99), 0.5: (0.45, 0.95), 0.75: (0.2, 0.85), 1.0: (0.1, 0.7)}
    choice = choose_alpha(list(table), table.get, (1.0, 1.0), forget_threshold=0.5,
                          retain_tolerance=0.1)
    assert choice.alpha == 0.5 and choice.reason.startswith("smallest alpha")
    assert [row["alpha"] for row in choice.table] == [0.25, 0.5, 0.75, 1.0]
    # Nothing reaches the threshold: the lowest forget among the alphas that keep retain.
    choice = choose_alpha(list(table), table.get, (1.0, 1.0), forget_threshold=0.05,
                          retain_tolerance=0.1)
    assert choice.alpha == 0.5 and choice.reason.startswith("no alpha reached")
    # Nothing keeps retain: the best retain - forget trade-off (0.75: 0.85 - 0.2).
    choice = choose_alpha(list(table), table.get, (1.0, 1.0), forget_threshold=0.5,
                          retain_tolerance=0.0)
    assert choice.alpha == 0.75 and choice.reason.startswith("every alpha dropped retain")
