"""Whether a model's sequences start with its BOS token: one rule for perplexity, calibration, search and scoring.

The rule is lm-eval's. Its HFLM (0.4.13, what `sfsd eval` runs) encodes every request with the tokenizer's
defaults, so a sequence starts with BOS exactly when the model's tokenizer adds one (Gemma, LLaMA-1/2 and
Mistral tokenizers do; GPT-2, Qwen2 and SmolLM2's do not). lm-eval's vLLM and SGLang backends also add BOS
to every Gemma model whatever its tokenizer says ("Gemma series models underperform without it"):
`require_family_bos` (called by `sfsd.models.load_model`) turns a Gemma tokenizer's BOS on, so HFLM and
everything here then agree.

Where the rule says BOS, a sequence of `seq_len` tokens is BOS + (seq_len - 1) text tokens: the same
length, so the same compute, and the same seq_len - 1 scored tokens per window as a window without BOS
(the BOS position is never a target). Where it does not, nothing changes, and neither do cache keys:
`key_fields` adds a field only for a model whose sequences start with BOS.
"""

from __future__ import annotations

from typing import Any

import torch

from sfsd.errors import SfsdError

# lm-eval's vLLM/SGLang backends add BOS for every model whose name contains "gemma"; these are the config
# model types of those families.
BOS_FAMILIES = ("gemma", "gemma2", "gemma3", "gemma3_text")
BOS_LAYOUT = "BOS + (seq_len - 1) text tokens; the BOS position is not scored"


def starts_with_bos(tokenizer: Any) -> bool:
    """The rule: a model's sequences start with BOS when encoding a text with its (loaded) tokenizer's defaults
    puts BOS first (what HFLM sends)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None or not callable(tokenizer):
        return False
    ids = tokenizer("a", verbose=False)["input_ids"]
    return bool(ids) and ids[0] == bos


def require_family_bos(tokenizer: Any, model_type: str | None) -> None:
    """Turn BOS on for a family that needs it (Gemma) when its tokenizer was saved without it, or fail in one line."""
    if model_type not in BOS_FAMILIES or starts_with_bos(tokenizer):
        return
    if getattr(tokenizer, "bos_token_id", None) is not None and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = True  # transformers rebuilds the post-processor
    if not starts_with_bos(tokenizer):
        raise SfsdError(f"this {model_type} model needs BOS at the start of every sequence, and its tokenizer "
                        "adds none: set add_bos_token true (and a bos_token) in its tokenizer_config.json")


def bos_id(tokenizer: Any) -> int:
    return int(tokenizer.bos_token_id)


def text_ids(tokenizer: Any, text: str) -> torch.Tensor:
    """The text's tokens without any special token (the windows add BOS themselves)."""
    return torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)


def prepend_bos(windows: torch.Tensor, bos: int) -> torch.Tensor:
    """[n, L] -> [n, L + 1] with BOS in column 0."""
    return torch.cat([torch.full((windows.shape[0], 1), bos, dtype=windows.dtype), windows], dim=1)


def key_fields(bos: bool) -> dict:
    """What a cache key or a run's identity adds for a model whose sequences start with BOS (nothing otherwise,
    so keys made before the rule existed stay valid)."""
    return {"bos": True} if bos else {}


def record(bos: bool) -> dict:
    """What a stored number says about its sequences."""
    return {"bos": bos, "sequence": BOS_LAYOUT if bos else "text tokens only (the tokenizer adds no BOS)"}
