"""ULMR step 4: parameter averaging, soups, and the automatic choice of alpha."""

from pathlib import Path

import pytest
import torch

from ulmr.errors import UlmrError
from ulmr.selection import choose_alpha
from ulmr.unlearning.averaging import OnDisk, interpolate, load_weights, soup
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


ORIGINAL = {"forget_prob": 0.8, "forget_rouge": 0.8, "retain_prob": 0.9, "retain_rouge_gold": 0.9,
            "forget_answers": ["Moon Soup", "Quibberton"], "retain_answers": ["a b c d", "e f g h"]}


def measured(forget_prob, forget_rouge, retain_answers):
    return {**ORIGINAL, "forget_prob": forget_prob, "forget_rouge": forget_rouge, "retain_answers": retain_answers}


def test_auto_alpha_takes_the_best_validation_score_and_records_the_curve():
    # No reference inside a method: forget progress is the mean relative drop of ROUGE and P.
    table = {
        # progress (0.25 + 0.5) / 2 = 0.375; retain answers kept: score 0.375
        0.5: measured(0.6, 0.4, ["a b c d", "e f g h"]),
        # progress (0.5 + 0.75) / 2 = 0.625; kept (1 + 0.5) / 2 = 0.75, no refusal: score 0.46875
        0.75: measured(0.4, 0.2, ["a b c d", "e f"]),
        # progress (0.75 + 1) / 2 = 0.875; kept (0.5 + 0) / 2 = 0.25, refuses 1 of 2: score 0.109375
        1.0: measured(0.2, 0.0, ["a b", "I don't know."]),
    }
    choice = choose_alpha([1.0, 0.5, 0.75], table.get, ORIGINAL)
    assert choice.alpha == 0.75 and choice.reason.startswith("highest validation score 0.4688")
    assert [row["alpha"] for row in choice.curve] == [0.5, 0.75, 1.0]
    assert [row["score"] for row in choice.curve] == pytest.approx([0.375, 0.46875, 0.109375])
    assert [row["retain_refusal_rate"] for row in choice.curve] == [0.0, 0.0, 0.5]
    assert choice.curve[1]["forget_prob"] == 0.4 and "retain_answers" not in choice.curve[1]
    assert choice.answers == {"forget": ORIGINAL["forget_answers"], "retain": ["a b c d", "e f"]}


def test_auto_alpha_breaks_ties_and_all_zero_scores_towards_the_original():
    same = measured(0.4, 0.4, ["a b c d", "e f g h"])
    choice = choose_alpha([0.4, 0.2, 0.6], lambda alpha: same, ORIGINAL)
    assert choice.alpha == 0.2 and "tied with 0.4, 0.6: the smallest alpha" in choice.reason
    choice = choose_alpha([0.5, 1.0], lambda alpha: ORIGINAL, ORIGINAL)  # nothing forgotten
    assert choice.alpha == 0.5 and choice.reason.startswith("no grid alpha scored above 0")


def test_weights_held_on_disk_come_back_bit_for_bit_and_leave_no_file(tiny):
    """The original weights wait in a temporary file while training runs (ULMR, average_alpha)."""
    model, _ = tiny
    state = full_state_dict(model)
    held = OnDisk(state)
    folder = Path(held._folder.name)
    assert any(folder.iterdir())
    back = held.load()
    assert back.keys() == state.keys() and all(torch.equal(back[k], v) and back[k].dtype == v.dtype
                                               for k, v in state.items())
    assert not folder.exists()
