"""Log-likelihood of continuations the way lm-eval 0.4.13's HFLM computes them, without lm-eval.

This is the reference for a fast custom loop (the rank search): `encode_request` reproduces
`TemplateLM._encode_pair` / `HFLM.tok_encode` (trailing context spaces move into the continuation;
the continuation is what encoding context+continuation adds after the encoded context; an empty
context is conditioned on the BOS token, else EOS), and `continuation_logprobs` reproduces
`HFLM._loglikelihood_tokens` (left-truncate to max_length+1 tokens, drop the last token, right-pad,
no attention mask, log_softmax in the model's dtype, gather the continuation tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sfsd.offload import input_device

DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when the config names no context length


def prefix_token_id(tokenizer) -> int:
    """The token an empty context stands for: BOS, else EOS (lm-eval's `prefix_token_id`)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _encode(tokenizer, text: str) -> list[int]:
    kwargs = {}
    if text.startswith(tokenizer.decode(prefix_token_id(tokenizer))):
        kwargs["add_special_tokens"] = False  # the text already starts with BOS
    return list(tokenizer.encode(text, **kwargs))


def encode_request(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) exactly as lm-eval's HFLM splits a causal request."""
    if context == "":
        cont = list(tokenizer.encode(continuation, add_special_tokens=False))
        prefix = prefix_token_id(tokenizer)
        return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = _encode(tokenizer, context + continuation)
    ctx = _encode(tokenizer, context)
    return ctx, whole[len(ctx) :]


def model_max_length(model: nn.Module) -> int:
    """The context length lm-eval resolves from the config (text_config first)."""
    config = getattr(model, "config", None)
    for cfg in (getattr(config, "text_config", None), config):
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(cfg, attr, None) if cfg is not None else None
            if value:
                return int(value)
    return DEFAULT_MAX_LENGTH


def _device(model: nn.Module) -> torch.device:
    return input_device(model)


def lm_eval_batches(
    pairs: Sequence[tuple[list[int], list[int]]], batch_size: int, max_length: int
) -> list[tuple[torch.Tensor, list[tuple[int, int]]]]:
    """Right-padded input batches, longest first, as HFLM forms them (no attention mask).

    Each batch comes with its rows' (pair index, end) where `end` is the length of the row's input:
    the continuation's log-probabilities are read from logits[row, end - len(cont) : end].
    """
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        seqs = [(pairs[i][0] + pairs[i][1])[-(max_length + 1) :][:-1] for i in chunk]
        batch = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
        for row, seq in enumerate(seqs):
            batch[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        batches.append((batch, [(i, len(seq)) for i, seq in zip(chunk, seqs, strict=True)]))
    return batches


def gather_continuation(logits_row: torch.Tensor, end: int, cont: list[int]) -> torch.Tensor:
    """Log-probabilities (float32, CPU) of the continuation tokens ending at `end`."""
    target = torch.tensor(cont, dtype=torch.long, device=logits_row.device)
    logp = F.log_softmax(logits_row[end - len(cont) : end], dim=-1)
    return logp.gather(1, target[:, None]).squeeze(1).float().cpu()


@torch.no_grad()
def continuation_logprobs(
    model: nn.Module,
    pairs: Sequence[tuple[list[int], list[int]]],
    batch_size: int = 8,
    max_length: int | None = None,
) -> list[torch.Tensor]:
    """Per-token log-probabilities (float32, CPU) of each continuation given its context."""
    device = _device(model)
    out: list[torch.Tensor] = [torch.empty(0)] * len(pairs)
    for batch, rows in lm_eval_batches(pairs, batch_size, max_length or model_max_length(model)):
        logits = model(batch.to(device)).logits
        for row, (i, end) in enumerate(rows):
            out[i] = gather_continuation(logits[row], end, pairs[i][1])
    return out


def request_logliks(model: nn.Module, tokenizer, requests: Sequence[Sequence], batch_size: int = 8) -> list[float]:
    """Summed log-likelihood of each (doc_id, context, continuation, choice_index) request."""
    pairs = [encode_request(tokenizer, req[1], req[2]) for req in requests]
    return [float(lp.sum()) for lp in continuation_logprobs(model, pairs, batch_size)]
