"""Random-initialised models of any published shape, to measure memory and time before downloading one."""

from __future__ import annotations

from pathlib import Path

import torch

from sfsd.atomic import atomic_dir
from sfsd.errors import SfsdError

SYNTH_ARCHS = ("llama", "mistral", "qwen2", "qwen3")
INIT_STD = 0.02  # transformers' initializer_range: keeps activations finite at any width


def synth_config(arch: str, hidden: int, intermediate: int, heads: int, kv_heads: int, blocks: int,
                 vocab_size: int, dtype: torch.dtype, special: dict):
    """The config of `arch` with the given shape (head dim = hidden / heads, untied head as LLaMA-7B)."""
    from transformers import CONFIG_MAPPING

    if arch not in SYNTH_ARCHS:
        raise SfsdError(f"unknown --arch {arch!r}: choose one of {', '.join(SYNTH_ARCHS)}")
    if min(hidden, intermediate, heads, kv_heads, blocks) < 1:
        raise SfsdError("--hidden, --intermediate, --heads, --kv-heads and --blocks must be positive")
    if hidden % heads or heads % kv_heads:
        raise SfsdError(f"--hidden {hidden} must divide by --heads {heads}, and --heads by --kv-heads {kv_heads}")
    return CONFIG_MAPPING[arch](
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=blocks,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
        max_position_embeddings=4096, tie_word_embeddings=False, dtype=dtype, **special)


def random_weights(model: torch.nn.Module, seed: int, std: float = INIT_STD) -> None:
    """Seeded N(0, std) matrices, unit norm weights, zero biases, written in place (no second copy)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.fill_(1.0 if "norm" in name else 0.0)
            else:
                param.normal_(0.0, std, generator=gen)


def synthesize(out: str | Path, arch: str, hidden: int, intermediate: int, heads: int, kv_heads: int, blocks: int,
               dtype: torch.dtype = torch.float32, seed: int = 0, overwrite: bool = False) -> Path:
    """Write a random model folder (safetensors, config, the default model's tokenizer) atomically.

    The model is built on the meta device (no memory, no default init) and then given CPU storage once,
    so the peak is the model's own size in `dtype`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sfsd.models import DEFAULT_MODEL, resolve_model

    out = Path(out)
    if out.exists() and not overwrite:
        raise SfsdError(f"{out} already exists: choose another --out or pass --overwrite")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))
    special = {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    if special["pad_token_id"] is None:
        special["pad_token_id"] = special["eos_token_id"]
    config = synth_config(arch, hidden, intermediate, heads, kv_heads, blocks, len(tokenizer), dtype, special)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.to_empty(device="cpu")  # non-persistent buffers (rotary) are not saved: loading rebuilds them
    random_weights(model, seed)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out
