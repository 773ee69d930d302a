"""Perplexity on the wiki text: non-overlapping windows of `seq_len` tokens (the seed paper: 128)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sfsd.errors import SfsdError
from sfsd.evaluate import _pack
from sfsd.evaluate.cache import EvalCache, cache_key, require
from sfsd.evaluate.fingerprint import model_fingerprint

RESULT_KEYS = ("ppl", "seq_len", "n_tokens", "n_windows", "split", "model_key")


def tokenize_text(tokenizer: Any, text: str) -> torch.Tensor:
    """The whole text as one token sequence (tokenizer defaults, as in the SVD-LLM/ASVD scripts)."""
    return torch.tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long)


def windows(tokens: torch.Tensor, seq_len: int, max_tokens: int | None = None) -> torch.Tensor:
    """[n_windows, seq_len] non-overlapping windows; the tail shorter than seq_len is dropped."""
    if seq_len < 2:
        raise SfsdError(f"seq_len must be at least 2, not {seq_len}")
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    n_windows = len(tokens) // seq_len
    if n_windows == 0:
        raise SfsdError(f"the text has {len(tokens)} tokens, fewer than one window of {seq_len}")
    return tokens[: n_windows * seq_len].view(n_windows, seq_len)


@torch.no_grad()
def window_nll(model: nn.Module, batch: torch.Tensor) -> float:
    """Summed next-token negative log-likelihood over a batch of windows (seq_len - 1 per window)."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    logits = model(batch).logits[:, :-1].float()
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"))


def perplexity_of_windows(model: nn.Module, chunks: torch.Tensor, batch_size: int, progress: bool = True) -> float:
    """exp(mean NLL over every predicted token of every window)."""
    total = 0.0
    starts = range(0, len(chunks), batch_size)
    for start in tqdm(starts, desc="perplexity", unit="batch", disable=not progress):
        total += window_nll(model, chunks[start : start + batch_size])
    return math.exp(total / (chunks.shape[0] * (chunks.shape[1] - 1)))


def _check_entry(meta: dict, records: object) -> None:
    require(meta, None, tuple(f"result.{name}" for name in RESULT_KEYS))


def perplexity(
    model: nn.Module,
    tokenizer: Any,
    split: str = "eval",
    seq_len: int = 128,
    max_tokens: int | None = None,
    model_key: str | None = None,
    text: str | None = None,
    batch_size: int | None = None,
    pack_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> dict:
    """Perplexity over the concatenated wiki text of a split (or `text`), cached.

    Returns {ppl, seq_len, n_tokens (tokens in the windows), n_windows, split, model_key, cached}:
    the sequence length always travels with the number (128 in the seed paper, 2048 elsewhere).
    `max_tokens` keeps only the first tokens of the text.
    """
    text = text if text is not None else _pack.wiki_text(split, Path(pack_dir) if pack_dir else None)
    key_of = model_key or model_fingerprint(model)
    fields = {
        "kind": "ppl",
        "model": key_of,
        "split": split,
        "seq_len": seq_len,
        "max_tokens": max_tokens,
        "data": _pack.digest(text),
    }
    cache, key = (EvalCache() if use_cache else None), cache_key(fields)
    hit = cache.load("ppl", key, _check_entry) if cache else None
    if hit is not None:
        return {name: hit[0]["result"][name] for name in RESULT_KEYS} | {"cached": True}
    chunks = windows(tokenize_text(tokenizer, text), seq_len, max_tokens)
    batch_size = batch_size or max(1, min(16, 2048 // seq_len))
    result = {
        "ppl": perplexity_of_windows(model, chunks, batch_size, progress),
        "seq_len": seq_len,
        "n_tokens": int(chunks.numel()),
        "n_windows": int(chunks.shape[0]),
        "split": split,
        "model_key": key_of,
    }
    if cache:
        cache.store("ppl", key, {"result": result, "fields": fields})
    return {**result, "cached": False}
