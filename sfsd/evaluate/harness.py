"""Multiple-choice evaluation through lm-eval (`HFLM` around a model object + `simple_evaluate`)."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from torch import nn

from sfsd.cache import model_fingerprint
from sfsd.errors import SfsdError
from sfsd.evaluate import _pack
from sfsd.evaluate.cache import EvalCache, entry_key, require
from sfsd.evaluate.leaks import refuse_model_leaks, task_targets
from sfsd.evaluate.tasks import TaskSpec, check_suite, load_tasks, resolve_specs, rows_spec
from sfsd.offload import input_device

SUMMARY_COLUMNS = ["task", "split", "n", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "lm_eval_version"]
_EXTRA_COLUMNS = ["suite", "limit", "model_key", "cached"]
_METRICS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")
RECORD_COLUMNS = ["task", "doc_id", "gold", "pred", "pred_norm", "correct", "correct_norm", "loglik", "choice_len"]


def lm_eval_version() -> str:
    """The installed lm-eval version (the value of `lm_eval.__version__`), without importing it."""
    return version("lm_eval")


@dataclass
class TaskResults:
    """Multiple-choice results: one summary row per task, one record row per document.

    summary: task, split, n, acc, acc_stderr, acc_norm, acc_norm_stderr, lm_eval_version,
        suite, limit, model_key, cached.
    records: task, doc_id (the pack row id), gold, pred (argmax of the summed log-likelihoods),
        pred_norm (argmax of log-likelihood / character length of the choice, lm-eval's acc_norm),
        correct, correct_norm, loglik (one float per choice), choice_len (characters per choice).
    """

    summary: pd.DataFrame
    records: pd.DataFrame


class ChoiceRequest(NamedTuple):
    """One lm-eval loglikelihood request of a multiple-choice document."""

    doc_id: str
    context: str
    continuation: str  # target_delimiter (" ") + choice
    choice_index: int


def _check_limit(limit: int | None) -> int | None:
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise SfsdError(f"limit must be a positive number of documents, not {limit!r}")
    return limit


@contextlib.contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """Hide lm-eval's info/warning chatter (e.g. about passing a model object) unless -v."""
    logger = logging.getLogger("lm_eval")
    old = logger.level
    if not logging.getLogger("sfsd").isEnabledFor(logging.INFO):
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


# ---------------------------------------------------------------- per-document records and scores


def _doc_id(task: str, doc: dict, index: int) -> str:
    return str(doc["id"]) if isinstance(doc, dict) and "id" in doc else f"{task}-{index}"


def _gold(task_obj: Any, doc: dict, choices: list[str]) -> int:
    gold = task_obj.doc_to_text(doc) if task_obj.multiple_input else task_obj.doc_to_target(doc)
    if isinstance(gold, str):
        gold = choices.index(gold) if gold in choices else -1
    if isinstance(gold, list):
        gold = gold[0]
    return int(gold)


def record_from_sample(task: str, task_obj: Any, sample: dict) -> dict:
    """One per-document record from an lm-eval logged sample."""
    doc = sample["doc"]
    choices = [str(choice) for choice in task_obj.doc_to_choice(doc)]
    lls = [float(resp[0]) for resp in sample["filtered_resps"]][: len(choices)]
    lens = [float(len(choice)) for choice in choices]
    return _record(task, _doc_id(task, doc, sample["doc_id"]), _gold(task_obj, doc, choices), lls, lens)


def _record(task: str, doc_id: str, gold: int, lls: list[float], lens: list[float]) -> dict:
    pred = int(np.argmax(lls))
    pred_norm = int(np.argmax(np.asarray(lls) / np.asarray(lens)))
    return {
        "task": task,
        "doc_id": doc_id,
        "gold": gold,
        "pred": pred,
        "pred_norm": pred_norm,
        "correct": pred == gold,
        "correct_norm": pred_norm == gold,
        "loglik": lls,
        "choice_len": lens,
    }


def _stderr(values: np.ndarray) -> float:
    """lm-eval's closed-form standard error of a mean (sample std / sqrt(n))."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


def score_choices(records: pd.DataFrame | Iterable[dict]) -> dict[str, float]:
    """acc and acc_norm (with stderr) from records carrying loglik, gold and choice_len (or choices).

    Definitions as in lm-eval 0.4.13 `ConfigurableTask.process_results`: acc = argmax of the
    summed log-likelihoods is the gold index; acc_norm = argmax of log-likelihood divided by the
    choice's length in *characters* (`len(choice)`, without the leading space) is gold.
    Ties go to the first choice (numpy argmax).
    """
    rows = records.to_dict("records") if isinstance(records, pd.DataFrame) else list(records)
    if not rows:
        raise SfsdError("no records to score")
    acc, acc_norm = [], []
    for row in rows:
        lls = np.asarray(row["loglik"], dtype=float)
        lens = row.get("choice_len")
        lens = np.asarray([len(c) for c in row["choices"]] if lens is None else lens, dtype=float)
        acc.append(float(np.argmax(lls) == row["gold"]))
        acc_norm.append(float(np.argmax(lls / lens) == row["gold"]))
    a, b = np.asarray(acc), np.asarray(acc_norm)
    return {
        "n": len(rows),
        "acc": float(a.mean()),
        "acc_stderr": _stderr(a),
        "acc_norm": float(b.mean()),
        "acc_norm_stderr": _stderr(b),
    }


# ---------------------------------------------------------------- lm-eval requests, for custom loops


def task_requests(
    task: str, split: str = "eval", limit: int | None = None, pack_dir: str | Path | None = None
) -> list[ChoiceRequest]:
    """The loglikelihood requests lm-eval builds for an offline task: (doc_id, context, continuation, i).

    Built by lm-eval itself (`Task.build_all_requests`), in document order, `limit` = first N docs.
    A loop that scores them with `scoring.request_logliks` and feeds `choice_records` into
    `score_choices` reproduces `evaluate_tasks`' acc and acc_norm.
    """
    _check_limit(limit)
    (spec,) = resolve_specs([task], split, "offline", pack_dir)
    return _spec_requests(task, spec, limit)


def rows_requests(task: str, split: str, rows: list[dict]) -> list[ChoiceRequest]:
    """`task_requests` for any rows {id, query, choices, label} (e.g. hub train rows for a search)."""
    return _spec_requests(task, rows_spec(task, split, rows), None)


def _spec_requests(task: str, spec: TaskSpec, limit: int | None) -> list[ChoiceRequest]:
    with quiet_lm_eval():
        _, loaded = load_tasks([spec])
        task_obj = loaded[spec.lm_name]
        task_obj.build_all_requests(limit=limit, rank=0, world_size=1)
    return [
        ChoiceRequest(_doc_id(task, inst.doc, inst.doc_id), inst.arguments[0], inst.arguments[1], inst.idx)
        for inst in task_obj.instances
    ]


def task_docs(
    task: str, split: str = "eval", limit: int | None = None, pack_dir: str | Path | None = None
) -> list[dict]:
    """The pack rows lm-eval evaluates for a task (file order, first `limit`)."""
    rows = _pack.task_rows(task, split, pack_dir)
    return rows[: _check_limit(limit)] if limit else rows


def choice_records(
    task: str, requests: Sequence[ChoiceRequest], logliks: Sequence[float], docs: Sequence[dict]
) -> pd.DataFrame:
    """Per-document records (as in `TaskResults.records`) from request log-likelihoods."""
    by_doc: dict[str, list[tuple[int, float]]] = {}
    for req, ll in zip(requests, logliks, strict=True):
        by_doc.setdefault(req.doc_id, []).append((req.choice_index, float(ll)))
    rows = []
    for doc in docs:
        if doc["id"] not in by_doc:
            continue
        lls = [ll for _, ll in sorted(by_doc[doc["id"]])]
        lens = [float(len(choice)) for choice in doc["choices"]]
        rows.append(_record(task, doc["id"], int(doc["label"]), lls, lens))
    return pd.DataFrame(rows, columns=RECORD_COLUMNS)


# ---------------------------------------------------------------- evaluate_tasks


def _key_fields(spec: TaskSpec, model_key: str, limit: int | None) -> dict:
    return {
        "kind": "tasks",
        "model": model_key,
        "suite": spec.suite,
        "task": spec.task,
        "split": spec.split,
        "limit": limit,
        "lm_eval": lm_eval_version(),
        "data": spec.data_digest,
    }


def _summary_row(spec: TaskSpec, metrics: dict, limit: int | None, model_key: str) -> dict:
    return {
        "task": spec.task,
        "split": spec.split,
        "n": int(metrics["n"]),
        "acc": metrics["acc"],
        "acc_stderr": metrics["acc_stderr"],
        "acc_norm": metrics["acc_norm"],
        "acc_norm_stderr": metrics["acc_norm_stderr"],
        "lm_eval_version": lm_eval_version(),
        "suite": spec.suite,
        "limit": limit,
        "model_key": model_key,
    }


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):  # lm-eval writes "N/A" for a stderr of one document
        return float("nan")


def _run_lm_eval(
    model: nn.Module, tokenizer: Any, specs: list[TaskSpec], limit: int | None, batch_size: int
) -> dict[str, tuple[dict, pd.DataFrame]]:
    """Run simple_evaluate once over several tasks; {task: (lm-eval metrics, records)}."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    with quiet_lm_eval():
        manager, loaded = load_tasks(specs)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        lm._device = input_device(model)  # HFLM takes the first parameter's, which a device map may put on disk
        result = lm_eval.simple_evaluate(
            model=lm,
            tasks=[loaded[spec.lm_name] for spec in specs],
            task_manager=manager,
            limit=limit,
            log_samples=True,
            cache_requests=False,  # lm-eval's request cache pickles; ours is JSON + Parquet
            use_cache=None,  # no sqlite response cache either
            bootstrap_iters=1000,  # acc/acc_norm stderr is closed-form; this only enables it
            random_seed=None,  # leave the caller's RNG state alone (0-shot needs no seeds)
            numpy_random_seed=None,
            torch_random_seed=None,
        )
    out = {}
    for spec in specs:
        metrics = result["results"][spec.lm_name]
        samples = sorted(result["samples"][spec.lm_name], key=lambda s: s["doc_id"])
        task_obj = loaded[spec.lm_name]
        records = pd.DataFrame([record_from_sample(spec.task, task_obj, s) for s in samples], columns=RECORD_COLUMNS)
        out[spec.task] = (metrics, records)
    return out


def _normalise_records(records: pd.DataFrame) -> pd.DataFrame:
    """Parquet gives list columns back as numpy arrays; turn them into lists of floats."""
    records = records.copy()
    for column in ("loglik", "choice_len"):
        records[column] = [[float(x) for x in value] for value in records[column]]
    return records


def _check_entry(meta: dict, records: pd.DataFrame | None) -> None:
    require(meta, records, tuple(f"summary.{c}" for c in SUMMARY_COLUMNS + _EXTRA_COLUMNS[:-1]), RECORD_COLUMNS)


def evaluate_tasks(
    model: nn.Module,
    tokenizer: Any,
    tasks: list[str] | str | None = None,
    split: str = "eval",
    limit: int | None = None,
    suite: str = "offline",
    model_key: str | None = None,
    batch_size: int = 8,
    pack_dir: str | Path | None = None,
    use_cache: bool = True,
) -> TaskResults:
    """Zero-shot multiple-choice accuracy through lm-eval, cached per (model, task, split, limit).

    tasks: short names ("piqa", "boolq", ...); None = the whole suite. suite "offline" reads the
    local pack (`pack_dir`, default `sfsd.data`); suite "paper" runs lm-eval's own boolq, piqa,
    hellaswag, winogrande, arc_easy, arc_challenge and needs the hub. model_key: a name for the
    model's weights in the cache key (default: `model_fingerprint(model)`).
    """
    check_suite(suite)
    _check_limit(limit)
    refuse_model_leaks(model, task_targets(tasks, split, suite))  # before the hub is asked for anything
    specs = resolve_specs(tasks, split, suite, Path(pack_dir) if pack_dir else None)
    key_of = model_key or model_fingerprint(model)
    cache = EvalCache() if use_cache else None
    summaries: dict[str, dict] = {}
    records: dict[str, pd.DataFrame] = {}
    todo = []
    for spec in specs:
        hit = cache.load("tasks", entry_key(_key_fields(spec, key_of, limit)), _check_entry) if cache else None
        if hit is None:
            todo.append(spec)
            continue
        summaries[spec.task] = {**hit[0]["summary"], "cached": True}
        records[spec.task] = _normalise_records(hit[1])
    if todo:
        fresh = _run_lm_eval(model, tokenizer, todo, limit, batch_size)
        for spec in todo:
            metrics, recs = fresh[spec.task]
            stats = {name: _as_float(metrics.get(f"{name},none")) for name in _METRICS}
            summary = _summary_row(spec, {"n": len(recs), **stats}, limit, key_of)
            if cache:
                cache.store("tasks", entry_key(_key_fields(spec, key_of, limit)), {"summary": summary}, recs)
            summaries[spec.task] = {**summary, "cached": False}
            records[spec.task] = recs
    order = [spec.task for spec in specs]
    summary_frame = pd.DataFrame([summaries[t] for t in order], columns=SUMMARY_COLUMNS + _EXTRA_COLUMNS)
    record_frame = pd.concat([records[t] for t in order], ignore_index=True)
    return TaskResults(summary=summary_frame, records=record_frame)
