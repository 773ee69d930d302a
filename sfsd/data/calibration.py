"""Calibration token windows for decomposition: packed text from the offline pack, no padding.

A source turns documents into `n_samples` windows of `seq_len` tokens: documents (in a seeded
random order) are tokenized without special tokens, each followed by the tokenizer's EOS, laid end
to end and cut into full windows, so every attention-mask entry is 1. When the documents hold
fewer tokens than needed, the stream wraps around: further passes over the documents, each in a
new seeded order (reported as `wrapped` and `passes` by `CalibrationData.describe()`).

Sources (`CALIBRATION_SOURCES`; add more with `register_text_source` or `register_source`):

- "wiki": the calib articles of the wiki stand-in for WikiText-2.
- a task name (boolq, piqa, openbookqa, commonsenseqa, siqa): that task's calib rows, each as
  "query + ' ' + gold choice".
- "mix": the paper's combination: sample i comes from task OFFLINE_TASKS[i % 5], so every batch
  of 5k consecutive samples is balanced across the tasks.
- "random": uniform random token ids (for tests; no text at all).

Hub sources (need the Hugging Face hub, or local copies under $SFSD_DATASETS_DIR; see `sfsd.data.hub`):

- "wikitext2", "c4": random windows of the train text joined with "\n\n", as SVD-LLM's
  `get_calib_train_data` draws them (AIoT-MLSys-Lab/SVD-LLM, utils/data_utils.py): a seeded character
  offset, the next 10 x seq_len characters tokenized, their first seq_len tokens (drawn again when
  shorter). Unlike SVD-LLM no BOS is added, as in every other source here. C4 is the train shard
  en/c4-train.00000-of-01024 (GPTQ, SliceGPT; SVD-LLM reads a JSON copy of it).
- "paper-mix": the paper's mix from the six commonsense tasks' train splits (`sfsd.data.paper_tasks`):
  sample i comes from task i % 6, each task's documents (lm-eval prompt + gold answer) packed as above
  from the 80% of its train rows that task-guided search never uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sfsd.data.hub import hub_dataset, hub_text_rows, joined_text, require_hub_split
from sfsd.data.pack import OFFLINE_TASKS, load_task, load_wiki
from sfsd.data.sequences import bos_id, prepend_bos, record, starts_with_bos
from sfsd.data.splits import rng_for
from sfsd.errors import SfsdError


@dataclass
class CalibrationData:
    """`n_samples` windows of `seq_len` token ids (no padding) and where they came from."""

    input_ids: torch.Tensor  # LongTensor [n_samples, seq_len]
    attention_mask: torch.Tensor  # LongTensor [n_samples, seq_len], all ones
    source: str
    seed: int = 0
    sample_sources: list[str] = field(default_factory=list)  # the text source of each sample
    info: dict = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def __len__(self) -> int:
        return self.n_samples

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(input_ids, attention_mask) in consecutive slices of `batch_size` samples."""
        for start in range(0, self.n_samples, batch_size):
            yield self.input_ids[start : start + batch_size], self.attention_mask[start : start + batch_size]

    def describe(self) -> dict:
        """A JSON-friendly summary: source, shape, seed, token counts and whether text was reused."""
        return {
            "source": self.source,
            "n_samples": self.n_samples,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "tokens": self.n_samples * self.seq_len,
            "padding_tokens": int((self.attention_mask == 0).sum()),
            **self.info,
        }


# A source builder: (tokenizer, n_samples, seq_len, seed) -> (ids [n, L] int64, per-sample source, info)
SourceBuilder = Callable[[Any, int, int, int], tuple[np.ndarray, list[str], dict]]
CALIBRATION_SOURCES: dict[str, SourceBuilder] = {}


def register_source(name: str, builder: SourceBuilder) -> None:
    """Add (or replace) a calibration source."""
    CALIBRATION_SOURCES[name] = builder


def _separator(tokenizer: Any) -> int | None:
    for attr in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return None


def pack_documents(
    token_lists: list[list[int]], separator: int | None, n_samples: int, seq_len: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict]:
    """Lay documents (each + separator) end to end in seeded orders and cut `n_samples` full windows."""
    docs = [
        np.asarray(list(t) + ([separator] if separator is not None else []), dtype=np.int64)
        for t in token_lists
        if len(t)
    ]
    available = int(sum(len(d) for d in docs))
    if available == 0:
        raise SfsdError("the calibration source holds no text: choose another source")
    need = n_samples * seq_len
    chunks: list[np.ndarray] = []
    have = 0
    passes_started = 0
    docs_used = 0
    while have < need:
        passes_started += 1
        for j in rng.permutation(len(docs)):
            chunks.append(docs[j])
            have += len(docs[j])
            docs_used += 1
            if have >= need:
                break
    stream = np.concatenate(chunks)[:need] if need else np.zeros(0, dtype=np.int64)
    wrapped = need > available
    info = {
        "documents": len(docs),
        "tokens_available": available,
        "tokens_used": need,
        "passes": round(need / available, 3),
        "wrapped": wrapped,
    }
    if wrapped:
        info["note"] = (
            f"only {available} tokens available for {need}: the text was cycled "
            f"{passes_started} times in fresh seeded orders, so windows repeat text"
        )
    return stream.reshape(n_samples, seq_len), info


def _tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return list(tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"])


def register_text_source(name: str, documents: Callable[[], list[str]]) -> None:
    """Add a source whose documents (strings) are packed into windows."""

    def build(tokenizer: Any, n_samples: int, seq_len: int, seed: int) -> tuple[np.ndarray, list[str], dict]:
        ids, info = pack_documents(
            _tokenize(tokenizer, documents()),
            _separator(tokenizer),
            n_samples,
            seq_len,
            rng_for(seed, f"calibration:{name}"),
        )
        return ids, [name] * n_samples, info

    register_source(name, build)


def _task_documents(task: str) -> Callable[[], list[str]]:
    def documents() -> list[str]:
        return [row["query"] + " " + row["choices"][row["label"]] for row in load_task(task, "calib")]

    return documents


def _wiki_documents() -> list[str]:
    return [row["text"] for row in load_wiki("calib")]


def _build_mix(tokenizer: Any, n_samples: int, seq_len: int, seed: int) -> tuple[np.ndarray, list[str], dict]:
    k = len(OFFLINE_TASKS)
    counts = {t: len(range(i, n_samples, k)) for i, t in enumerate(OFFLINE_TASKS)}
    ids = np.zeros((n_samples, seq_len), dtype=np.int64)
    parts = {}
    for i, task in enumerate(OFFLINE_TASKS):
        part, _, info = CALIBRATION_SOURCES[task](tokenizer, counts[task], seq_len, seed)
        ids[i::k] = part
        parts[task] = {"samples": counts[task], **info}
    info = {
        "rule": "sample i comes from OFFLINE_TASKS[i % 5] (calib rows, query + gold choice)",
        "wrapped": any(p["wrapped"] for p in parts.values()),
        "parts": parts,
    }
    return ids, [OFFLINE_TASKS[i % k] for i in range(n_samples)], info


def _build_random(tokenizer: Any, n_samples: int, seq_len: int, seed: int) -> tuple[np.ndarray, list[str], dict]:
    vocab = len(tokenizer) if tokenizer is not None else 0
    if vocab <= 0:
        raise SfsdError("the random calibration source needs a tokenizer with a vocabulary")
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n_samples, seq_len), generator=generator, dtype=torch.int64)
    return ids.numpy(), ["random"] * n_samples, {"vocab_size": vocab, "wrapped": False}


def random_text_windows(
    tokenizer: Any, text: str, n_samples: int, seq_len: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict]:
    """`n_samples` windows of `seq_len` tokens at seeded character offsets of `text` (SVD-LLM's draw)."""
    span = len(text) - seq_len - 1
    if span <= 0:
        raise SfsdError(f"the calibration text has {len(text)} characters, too few for windows of {seq_len} tokens")
    ids = np.zeros((n_samples, seq_len), dtype=np.int64)
    offsets: list[int] = []
    draws = 0
    while len(offsets) < n_samples:
        draws += 1
        if draws > 10 * n_samples + 100:
            raise SfsdError(f"the calibration text rarely holds {seq_len} tokens in {10 * seq_len} characters: "
                            "lower --calib-seq-len")
        start = int(rng.integers(0, span + 1))
        tokens = tokenizer(text[start : start + 10 * seq_len], add_special_tokens=False, verbose=False)["input_ids"]
        if len(tokens) < seq_len:
            continue
        ids[len(offsets)] = tokens[:seq_len]
        offsets.append(start)
    info = {"characters": len(text), "draws": draws, "wrapped": False,
            "rule": "seeded character offset, next 10 x seq_len characters tokenized, first seq_len tokens"}
    return ids, info


HUB_OFFLINE_HINTS = {
    "wikitext2": "use --calib-source wiki, the offline pack's calibration articles",
    "c4": "use --calib-source wiki, the offline pack's calibration articles",
}
HUB_SOURCES = ("wikitext2", "c4", "paper-mix")


def _hub_text_source(name: str) -> SourceBuilder:
    def build(tokenizer: Any, n_samples: int, seq_len: int, seed: int) -> tuple[np.ndarray, list[str], dict]:
        spec = hub_dataset(name, "train")
        text = joined_text(hub_text_rows(spec, f"--calib-source {name}", HUB_OFFLINE_HINTS[name]))
        ids, info = random_text_windows(tokenizer, text, n_samples, seq_len, rng_for(seed, f"calibration:{name}"))
        return ids, [name] * n_samples, {"dataset": spec.label, **info}

    return build


def _build_paper_mix(tokenizer: Any, n_samples: int, seq_len: int, seed: int) -> tuple[np.ndarray, list[str], dict]:
    from sfsd.data.paper_tasks import PAPER_SEARCH_FRACTION, PAPER_TASK_NAMES, PAPER_TRAIN, paper_documents

    k = len(PAPER_TASK_NAMES)
    ids = np.zeros((n_samples, seq_len), dtype=np.int64)
    parts = {}
    for i, task in enumerate(PAPER_TASK_NAMES):
        count = len(range(i, n_samples, k))
        if count == 0:
            continue
        part, info = pack_documents(_tokenize(tokenizer, paper_documents(task, "calib")), _separator(tokenizer),
                                    count, seq_len, rng_for(seed, f"calibration:paper-mix:{task}"))
        ids[i::k] = part
        parts[task] = {"samples": count, "dataset": PAPER_TRAIN[task].label, **info}
    info = {
        "rule": f"sample i comes from task i % {k} (train rows, lm-eval prompt + gold answer), drawn from the "
                f"{1 - PAPER_SEARCH_FRACTION:.0%} of each train split that search never uses",
        "wrapped": any(p["wrapped"] for p in parts.values()),
        "parts": parts,
    }
    return ids, [PAPER_TASK_NAMES[i % k] for i in range(n_samples)], info


def require_source_data(source: str) -> None:
    """Fail fast, in one line, when a hub source's data can be reached neither locally nor on the hub."""
    if source == "paper-mix":
        from sfsd.data.paper_tasks import require_paper_train

        require_paper_train()
    elif source in HUB_OFFLINE_HINTS:
        require_hub_split(hub_dataset(source, "train"), f"--calib-source {source}", HUB_OFFLINE_HINTS[source])


register_source("mix", _build_mix)
register_text_source("wiki", _wiki_documents)
for _task in OFFLINE_TASKS:
    register_text_source(_task, _task_documents(_task))
register_source("random", _build_random)
for _name in ("wikitext2", "c4"):
    register_source(_name, _hub_text_source(_name))
register_source("paper-mix", _build_paper_mix)


def calibration_tokens(
    tokenizer: Any, source: str = "mix", n_samples: int = 512, seq_len: int = 128, seed: int = 0
) -> CalibrationData:
    """`n_samples` calibration windows of `seq_len` tokens from `source` (see the module docstring).

    `tokenizer` is a transformers tokenizer (or a model name/folder, whose tokenizer is loaded). For a model
    whose sequences start with BOS (`sfsd.data.sequences`) each window is BOS + seq_len - 1 tokens of the
    source, so the statistics are those of the activations the model sees in use.
    The result is deterministic in (tokenizer, source, n_samples, seq_len, seed).
    """
    if source not in CALIBRATION_SOURCES:
        raise SfsdError(f"unknown calibration source {source!r}: choose one of {', '.join(CALIBRATION_SOURCES)}")
    if n_samples < 1 or seq_len < 1:
        raise SfsdError(f"n_samples and seq_len must be positive (got {n_samples} and {seq_len})")
    require_source_data(source)
    if isinstance(tokenizer, str):
        from transformers import AutoTokenizer

        from sfsd.models import resolve_model

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(tokenizer))
    bos = starts_with_bos(tokenizer)
    if bos and seq_len < 2:
        raise SfsdError("a model whose sequences start with BOS needs calibration windows of at least 2 tokens")
    ids, per_sample, info = CALIBRATION_SOURCES[source](tokenizer, n_samples, seq_len - bos, seed)
    input_ids = torch.as_tensor(np.ascontiguousarray(ids), dtype=torch.long)
    if bos:
        input_ids = prepend_bos(input_ids, bos_id(tokenizer))
    info = {"tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__), **info, **record(bos)}
    return CalibrationData(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        source=source,
        seed=seed,
        sample_sources=per_sample,
        info=info,
    )
