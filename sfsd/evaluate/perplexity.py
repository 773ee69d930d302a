"""Perplexity: non-overlapping windows of `seq_len` tokens (the seed paper: 128; the field: 2048).

`dataset="wiki"` (the default) reads the offline pack's wiki text of a split. The field's datasets
come from the hub, read as SVD-LLM's `get_test_data` / `ppl_eval` (AIoT-MLSys-Lab/SVD-LLM,
utils/data_utils.py and evaluater.py) and SliceGPT's `prepare_test_dataloader` (microsoft/
TransformerCompression, src/slicegpt/data_utils.py) read them: the rows' text joined with "\n\n",
tokenized once with the tokenizer's defaults, cut into non-overlapping windows of seq_len (the tail
dropped), and the perplexity is exp of the mean next-token loss over every predicted token:

- "wikitext2": `load_dataset("wikitext", "wikitext-2-raw-v1", split="test")`, column "text".
- "ptb": `load_dataset("ptb_text_only", "penn_treebank", split="test")`, column "sentence" (as SVD-LLM;
  SliceGPT has no PTB).
- "c4": the first 2000 documents of the validation shard en/c4-validation.00000-of-00008.json.gz of
  `allenai/c4` (SVD-LLM: `test_data[0:2000]` of its JSON copy of that shard), column "text".

Each window's summed loss is kept (the cache entry's records) and gives the perplexity's 95% bootstrap
interval over windows (`sfsd.evaluate.intervals.ppl_bootstrap_interval`).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sfsd.cache import model_fingerprint
from sfsd.data.sequences import BOS_FAMILIES, bos_id, key_fields, prepend_bos, starts_with_bos, text_ids
from sfsd.errors import SfsdError
from sfsd.evaluate import _pack
from sfsd.evaluate.cache import EvalCache, entry_key, require
from sfsd.evaluate.intervals import ppl_bootstrap_interval
from sfsd.evaluate.leaks import refuse_model_leaks
from sfsd.offload import input_device

PPL_DATASETS = ("wiki", "wikitext2", "ptb", "c4")
HUB_PPL_SPLIT = {"wikitext2": "test", "ptb": "test", "c4": "validation"}
C4_DOCUMENTS = 2000  # SVD-LLM's get_test_data: the first 2000 documents of the C4 validation shard
OFFLINE_WIKI_HINT = "use --dataset wiki, the offline pack's Wikipedia text (its eval split)"

RESULT_KEYS = ("ppl", "seq_len", "n_tokens", "n_windows", "split", "model_key")
WINDOW_NLL = "nll"  # the records column of a ppl cache entry: each window's summed NLL, in window order


def tokenize_text(tokenizer: Any, text: str) -> torch.Tensor:
    """The whole text as one token sequence (tokenizer defaults, as in the SVD-LLM/ASVD scripts)."""
    return torch.tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long)


def windows(tokens: torch.Tensor, seq_len: int, max_tokens: int | None = None, bos: int | None = None) -> torch.Tensor:
    """[n_windows, seq_len] non-overlapping windows; the tail shorter than a window is dropped.

    With `bos` (a model whose sequences start with BOS, `sfsd.data.sequences`), each window is BOS + the next
    seq_len - 1 text tokens: the same length and the same seq_len - 1 scored tokens as a window without it.
    `max_tokens` bounds the tokens in the windows (BOS included).
    """
    if seq_len < 2:
        raise SfsdError(f"seq_len must be at least 2, not {seq_len}")
    step = seq_len if bos is None else seq_len - 1
    n_windows = len(tokens) // step
    if max_tokens is not None:
        n_windows = min(n_windows, max_tokens // seq_len)
    if n_windows == 0:
        raise SfsdError(f"the text has {len(tokens)} tokens, fewer than one window of {seq_len}")
    chunks = tokens[: n_windows * step].view(n_windows, step)
    return chunks if bos is None else prepend_bos(chunks, bos)


def window_bos(model: nn.Module, tokenizer: Any, dataset: str = "wiki") -> int | None:
    """The BOS id that starts every window, or None.

    wiki (and any text given): the model's rule (`sfsd.data.sequences`). Hub datasets keep the field's
    published protocol (the whole text tokenized once with the tokenizer's defaults: only the first window may
    start with BOS) except for the families that need BOS (Gemma), whose windows all start with it.
    """
    if not starts_with_bos(tokenizer):
        return None
    if dataset != "wiki" and getattr(getattr(model, "config", None), "model_type", None) not in BOS_FAMILIES:
        return None
    return bos_id(tokenizer)


def window_tokens(tokenizer: Any, text: str, seq_len: int, max_tokens: int | None, bos: int | None) -> torch.Tensor:
    """The perplexity windows of a text (see `windows` and `window_bos`)."""
    return windows(text_tokens(tokenizer, text, with_specials=bos is None), seq_len, max_tokens, bos)


# The token sequences of the last few texts tokenized in this process. A frontier, a uniform run or a search
# evaluates several models, window lengths or trials on one text, and the 950,000-character eval text takes
# about 0.75 s to tokenize each time (0.02 s to identify the tokenizer).
_TOKENS: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_TOKENS_LOCK = threading.Lock()
TEXTS_KEPT = 4


def text_tokens(tokenizer: Any, text: str, with_specials: bool = True) -> torch.Tensor:
    """The whole text as one token sequence: with the tokenizer's special tokens (`tokenize_text`) or without
    (`text_ids`); a copy of the sequence kept for this tokenizer and text where there is one."""
    tokenize = tokenize_text if with_specials else text_ids
    key = _tokens_key(tokenizer, text, with_specials)
    if key is None:
        return tokenize(tokenizer, text)
    with _TOKENS_LOCK:  # the dashboard's sessions are threads of one process
        kept = _TOKENS.get(key)
        if kept is not None:
            _TOKENS.move_to_end(key)
    if kept is None:
        kept = tokenize(tokenizer, text)
        with _TOKENS_LOCK:
            _TOKENS[key] = kept
            while len(_TOKENS) > TEXTS_KEPT:
                _TOKENS.popitem(last=False)
    return kept.clone()


def _tokens_key(tokenizer: Any, text: str, with_specials: bool) -> tuple | None:
    """What the tokens depend on: the fast tokenizer's whole serialised state (vocabulary, merges, normalizer,
    pre-tokenizer, post-processor, added tokens), the Python-side flag on special tokens, and the text. None for
    a tokenizer without a serialisable backend (it is not cached)."""
    try:
        state = tokenizer.backend_tokenizer.to_str()
    except AttributeError:
        return None
    return (type(tokenizer).__name__, hashlib.sha256(state.encode()).hexdigest(),
            getattr(tokenizer, "split_special_tokens", None), _pack.digest(text), with_specials)


IGNORED_TARGET = -100  # cross_entropy's ignore_index: the last position, which predicts nothing in its window


@torch.no_grad()
def window_nll(model: nn.Module, batch: torch.Tensor) -> list[float]:
    """Each window's summed next-token negative log-likelihood (seq_len - 1 scored tokens per window)."""
    batch = batch.to(input_device(model))
    # Every position's logits are scored, the last one against an ignored target, instead of slicing the last
    # off first: the slice would be copied whole (batch x seq_len x vocabulary floats) to be flattened. Each
    # position's loss and each window's sum are the same numbers.
    logits = model(batch).logits.float()
    targets = torch.full_like(batch, IGNORED_TARGET)
    targets[:, :-1] = batch[:, 1:]
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).to(logits.device),
                             reduction="none", ignore_index=IGNORED_TARGET)  # the head may sit on another device
    return losses.view(batch.shape)[:, :-1].sum(dim=1).tolist()


def nll_of_windows(model: nn.Module, chunks: torch.Tensor, batch_size: int, progress: bool = True) -> list[float]:
    """The summed NLL of every window, in order (what the perplexity and its interval are computed from)."""
    nll: list[float] = []
    starts = range(0, len(chunks), batch_size)
    for start in tqdm(starts, desc="perplexity", unit="batch", disable=not progress):
        nll += window_nll(model, chunks[start : start + batch_size])
    return nll


def ppl_of_nll(nll: list[float], seq_len: int) -> dict:
    """{ppl, ppl_low, ppl_high}: exp(mean NLL over every predicted token of every window) and its 95%
    bootstrap interval over the windows (`ppl_bootstrap_interval`; None with fewer than two windows)."""
    low, high = ppl_bootstrap_interval(nll, seq_len - 1)
    return {"ppl": math.exp(math.fsum(nll) / (len(nll) * (seq_len - 1))),
            "ppl_low": None if math.isnan(low) else low, "ppl_high": None if math.isnan(high) else high}


def check_dataset(dataset: str) -> str:
    if dataset not in PPL_DATASETS:
        raise SfsdError(f"unknown perplexity dataset {dataset!r}: choose one of {', '.join(PPL_DATASETS)}")
    return dataset


def require_dataset(dataset: str) -> None:
    """Fail fast (before a model is loaded) when a hub dataset can be read neither locally nor from the hub."""
    from sfsd.data.hub import hub_dataset, require_hub_split

    if check_dataset(dataset) != "wiki":
        spec = hub_dataset(dataset, HUB_PPL_SPLIT[dataset])
        require_hub_split(spec, f"--dataset {dataset}", OFFLINE_WIKI_HINT)


def hub_eval_text(dataset: str) -> str:
    """The evaluation text of a hub dataset, joined as the field joins it (see the module docstring)."""
    from sfsd.data.hub import hub_dataset, hub_text_rows, joined_text

    spec = hub_dataset(dataset, HUB_PPL_SPLIT[dataset])
    limit = C4_DOCUMENTS if dataset == "c4" else None
    return joined_text(hub_text_rows(spec, f"--dataset {dataset}", OFFLINE_WIKI_HINT, limit))


def dataset_split(dataset: str, split: str) -> str:
    """The split a perplexity reads: the pack split for wiki, the field's fixed split for hub datasets."""
    if check_dataset(dataset) == "wiki":
        return split
    if split != "eval":
        raise SfsdError(f"--dataset {dataset} has only its {HUB_PPL_SPLIT[dataset]} split: use --split eval")
    return HUB_PPL_SPLIT[dataset]


def _check_entry(meta: dict, records: pd.DataFrame | None) -> None:
    """A ppl entry needs its result; its records (one summed NLL per window), where stored, must be whole. An
    entry written before the windows were kept has no records: it is still served, without an interval."""
    require(meta, None, tuple(f"result.{name}" for name in RESULT_KEYS))
    if records is not None:
        require(meta, records, columns=(WINDOW_NLL,))
        if len(records) != meta["result"]["n_windows"]:
            raise ValueError("records do not hold one NLL per window")


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
    dataset: str = "wiki",
) -> dict:
    """Perplexity over the concatenated text of `dataset` (wiki: the pack split; or `text`), cached.

    Returns {ppl, ppl_low, ppl_high, seq_len, n_tokens (tokens in the windows), n_windows, split, model_key,
    bos, window_nll, dataset, cached}: the sequence length and whether every window starts with BOS
    (`window_bos`) always travel with the number (128 in the seed paper, 2048 elsewhere); [ppl_low, ppl_high]
    is its 95% bootstrap interval over the windows (`sfsd.evaluate.intervals.ppl_bootstrap_interval`) and
    window_nll each window's summed NLL, both None when served from a cache entry written before the windows
    were kept. `max_tokens` bounds the tokens in the windows.
    Hub datasets read their fixed split (`split` must be "eval"); a model calibrated or searched on the rows
    evaluated is refused.
    """
    split = dataset_split(dataset, split)
    if text is None:
        from sfsd.data.leakage import ppl_eval_rows

        refuse_model_leaks(model, [(f"sfsd ppl --dataset {dataset} --split {split}", ppl_eval_rows(dataset, split))])
    if text is None and dataset != "wiki":
        text = hub_eval_text(dataset)
    text = text if text is not None else _pack.wiki_text(split, Path(pack_dir) if pack_dir else None)
    key_of = model_key or model_fingerprint(model)
    bos = window_bos(model, tokenizer, dataset)
    fields = {
        "kind": "ppl",
        "model": key_of,
        "split": split if dataset == "wiki" else f"{dataset}:{split}",
        "seq_len": seq_len,
        "max_tokens": max_tokens,
        "data": _pack.digest(text),
        **key_fields(bos is not None),
    }
    cache, key = (EvalCache() if use_cache else None), entry_key(fields)
    hit = cache.load("ppl", key, _check_entry) if cache else None
    if hit is not None:
        return _from_cache(*hit) | {"dataset": dataset, "cached": True}
    chunks = window_tokens(tokenizer, text, seq_len, max_tokens, bos)
    batch_size = batch_size or max(1, min(16, 2048 // seq_len))
    nll = nll_of_windows(model, chunks, batch_size, progress)
    result = {
        **ppl_of_nll(nll, seq_len),
        "seq_len": seq_len,
        "n_tokens": int(chunks.numel()),
        "n_windows": int(chunks.shape[0]),
        "split": split,
        "model_key": key_of,
        "bos": bos is not None,
    }
    if cache:
        stored = {name: value for name, value in result.items() if name not in ("ppl_low", "ppl_high")}
        cache.store("ppl", key, {"result": stored, "fields": fields}, pd.DataFrame({WINDOW_NLL: nll}))
    return {**result, "window_nll": nll, "dataset": dataset, "cached": False}


def run_metrics(result: dict) -> dict:
    """What a run records of a perplexity result (its evaluations' `metrics`): the value, its interval (None when
    served from an entry without windows), the window length, the tokens and windows, and BOS."""
    return {name: result[name] for name in ("ppl", "ppl_low", "ppl_high", "seq_len", "n_tokens", "n_windows", "bos")}


def _from_cache(meta: dict, records: pd.DataFrame | None) -> dict:
    """A cached result; its interval is recomputed from the stored window NLLs. An entry written before they were
    kept has none: its point value stays usable (hours of model time) and its interval is None; deleting the
    entry (`cache/evals/ppl/<key>`) measures it again, with the interval."""
    result = meta["result"]
    out = {name: result[name] for name in RESULT_KEYS} | {"bos": bool(result.get("bos", False))}
    if records is None:
        return out | {"ppl_low": None, "ppl_high": None, "window_nll": None}
    nll = [float(x) for x in records[WINDOW_NLL]]
    interval = ppl_of_nll(nll, int(result["seq_len"]))
    return out | {"ppl_low": interval["ppl_low"], "ppl_high": interval["ppl_high"], "window_nll": nll}
