"""Cached reads for the dashboard: the run store (through `sfsd.runs` only), model facts and models.

Run-store reads are `st.cache_data` with a short ttl (a running search appends every second or so) and are
keyed by the store's root, so that a changed $SFSD_CACHE_DIR never serves another store's rows. Models
are `st.cache_resource` (a few hundred MB each, loaded once per process).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from sfsd import options
from sfsd.dashboard.plots import BASE
from sfsd.decompose import METHODS, TWO_FACTOR
from sfsd.errors import SfsdError
from sfsd.evaluate.intervals import PPL_BOOTSTRAP_RESAMPLES, format_ppl, format_proportion, mean_interval
from sfsd.models import DEFAULT_MODEL
from sfsd.paths import models_dir
from sfsd.runs import (
    EVALUATION_COLUMNS,
    LAYER_COLUMNS,
    RUN_COLUMNS,
    SNAPSHOT_COLUMNS,
    TRIAL_COLUMNS,
    RunStore,
    evaluations_frame,
    layers_frame,
    snapshots_frame,
    spectra_frame,
    trace_frame,
)
from sfsd.runs.frames import PPL_PARTS, ppl_cells
from sfsd.runs.readonly import readonly, require_writable
from sfsd.runs.transfer import imported_origin, origin_line

TTL_S = 2  # run-store reads: short, a running search updates its files every few seconds
ACTIVE_STATES = ("pending", "running")
DEMO_ENV = "SFSD_DEMO_MODEL"


def demo_model() -> str:
    """The model of the quick demo and of the start page's summary ($SFSD_DEMO_MODEL, else the default)."""
    return os.environ.get(DEMO_ENV) or DEFAULT_MODEL


# An absolute path inside a text (not the part of a URL after "://"): read-only mode shows its last part only.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~])/(?:[^\s/'\"`,;()\[\]{}]+/)*([^\s/'\"`,;()\[\]{}]*)")


def hide_paths(value: Any) -> Any:
    """`value` (text, or dicts and lists of it) with every absolute local path cut to its last part."""
    if isinstance(value, str):
        return _ABSOLUTE_PATH.sub(lambda match: match.group(1) or "(path)", value)
    if isinstance(value, dict):
        return {key: hide_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [hide_paths(item) for item in value]
    return value


def shown(value: Any) -> Any:
    """What a page may show of `value`: as it is, or without local paths in read-only mode."""
    return hide_paths(value) if readonly() else value


def store_root() -> str:
    """The run store's folder as a string (a cache key: it follows $SFSD_CACHE_DIR)."""
    return str(RunStore().root)


def clear() -> None:
    """Forget cached run-store reads (after launching, cancelling or deleting a run)."""
    _list_runs.clear()
    _load_run.clear()


# ---- the table of runs ----------------------------------------------------------------------------------


@st.cache_data(ttl=TTL_S, show_spinner=False)
def _list_runs(root: str, hide: bool) -> pd.DataFrame:
    runs = RunStore(Path(root)).list_runs()
    if hide:
        for column in ("model", "message"):
            runs[column] = runs[column].map(lambda value: hide_paths(value) if isinstance(value, str) else value)
    return runs


def list_runs(kind: str | None = None, readable: bool = True) -> pd.DataFrame:
    """RunStore.list_runs(), newest first; optionally one kind, and without unreadable folders."""
    try:
        runs = _list_runs(store_root(), readonly())
    except (OSError, SfsdError):
        runs = pd.DataFrame(columns=RUN_COLUMNS)
    if readable:
        runs = runs[runs["state"] != "invalid"]
    if kind is not None:
        runs = runs[runs["kind"] == kind]
    return runs.reset_index(drop=True)


def active_runs() -> pd.DataFrame:
    """Runs a process works on: running, or launched and starting (pending with a live process)."""
    runs = list_runs()
    active = (runs["state"] == "running") | ((runs["state"] == "pending") & runs["pid"].notna())
    return runs[active].reset_index(drop=True)


# ---- one run --------------------------------------------------------------------------------------------


@dataclass
class RunView:
    """Everything the pages show of one run (spectra apart: see `spectra`)."""

    run_id: str
    config: dict
    status: dict
    result: dict | None
    layers: pd.DataFrame
    snapshots: pd.DataFrame
    evaluations: pd.DataFrame
    trials: pd.DataFrame
    log_tail: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.config.get("kind") or "search")

    @property
    def method(self) -> str:
        return str(self.config.get("method") or "")

    @property
    def model(self) -> str:
        return str(self.config.get("model") or "")

    @property
    def state(self) -> str:
        return str(self.status.get("state") or "")

    @property
    def metric_name(self) -> str:
        metric = self.config.get("metric")
        return str(metric.get("name") if isinstance(metric, dict) else metric or "")

    @property
    def metric_label(self) -> str:
        """Axis title of the search metric, with its unit."""
        metric = self.config.get("metric") if isinstance(self.config.get("metric"), dict) else {}
        if self.metric_name == "ppl":
            return "perplexity (search split)"
        if self.metric_name == "task":
            which = "acc_norm" if metric.get("use_norm") else "acc"
            return f"{which} {metric.get('task')} (search split)"
        return self.metric_name or "metric"

    @property
    def heldout(self) -> str:
        """Search-split vs eval-split change of a finished search ("" when not a finished search)."""
        if self.kind != "search" or not self.result:
            return ""
        from sfsd.search.heldout import describe_heldout

        return describe_heldout(self.result)

    @property
    def heldout_change(self) -> str:
        """The held-out check's changes alone, for a chart's subtitle ("" when not a finished search)."""
        if self.kind != "search" or not self.result:
            return ""
        from sfsd.search.heldout import describe_heldout

        return describe_heldout(self.result, values=False)

    @property
    def tolerance(self) -> Any:
        metric = self.config.get("metric")
        return metric.get("tolerance") if isinstance(metric, dict) else self.config.get("tolerance")

    @property
    def label(self) -> str:
        return run_label(self.run_id, self.config)

    @property
    def origin(self) -> str:
        """"imported from HOST on DATE" for an imported run, "" for a run computed here."""
        return str(self.extra.get("origin") or "")

    @property
    def decided(self) -> pd.DataFrame:
        return self.layers[self.layers["decided"]] if not self.layers.empty else self.layers


def run_label(run_id: str, config: dict | None = None, state: str | None = None) -> str:
    """A short readable name: method, tolerance, model, id hash."""
    config = config or {}
    model = Path(str(config.get("model") or "?")).name
    metric = config.get("metric") if isinstance(config.get("metric"), dict) else {}
    parts = [str(config.get("method") or "?")]
    if config.get("kind") == "uniform":
        parts.append(f"beta {config.get('beta')} last {config.get('last_blocks')}")
    elif _number(config.get("target_budget")) is not None:  # an allocation: no tolerance
        parts.append(target_budget_text(config.get("strategy"), _number(config.get("target_budget"))))
    elif metric:
        parts.append(tolerance_text(metric.get("name"), _number(metric.get("tolerance")), metric.get("task")))
    parts.append(model)
    text = " · ".join(parts)
    suffix = run_id.rsplit("-", 1)[-1][:6]
    return f"{text} · {suffix}" + (f" ({state})" if state else "")


def _tail(path: Path, lines: int = 15, max_bytes: int = 20000) -> str:
    """The last lines of a log, progress-bar carriage returns resolved."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    rows = []
    for line in text.split("\n"):
        parts = [part.rstrip() for part in line.split("\r") if part.strip()]
        if parts:
            rows.append(parts[-1])  # what a terminal shows after the progress bar's rewrites
    return "\n".join(rows[-lines:])


@st.cache_data(ttl=TTL_S, show_spinner=False)
def _load_run(root: str, run_id: str, hide: bool) -> RunView | None:
    try:
        run = RunStore(Path(root)).run(run_id)
        status = run.status()
        evaluations = evaluations_frame(run)
        return RunView(
            run_id=run.id, config=hide_paths(run.config) if hide else run.config,
            status=hide_paths(status) if hide else status,
            result=run.result() if status["state"] == "done" else None,
            layers=layers_frame(run), snapshots=with_step_evaluations(snapshots_frame(run), evaluations),
            evaluations=evaluations,
            trials=trace_frame(run, "trial"), log_tail="" if hide else _tail(run.log_path),
            extra={"has_spectra": run.file("spectra.parquet").exists(),
                   "origin": origin_line(imported_origin(run))},
        )
    except (SfsdError, OSError, ValueError):
        return None


def with_step_evaluations(snapshots: pd.DataFrame, evaluations: pd.DataFrame) -> pd.DataFrame:
    """A search's snapshots with the accuracies `sfsd snapshot-eval` added afterwards (evaluations that name a
    step) as `acc:<task>`, `acc_norm:<task>`, `n:<task>` columns; a snapshot's own value is kept where it has one."""
    if snapshots.empty or evaluations.empty or "step" not in evaluations:
        return snapshots
    rows = evaluations[(evaluations.get("kind") == "task") & evaluations["step"].notna()]
    if rows.empty:
        return snapshots
    out = snapshots.copy()
    for record in rows.to_dict("records"):
        where = out["step"] == int(record["step"])
        for name in ("acc", "acc_norm", "n"):
            value, column = record.get(name), f"{name}:{record['task']}"
            if value is None or pd.isna(value):
                continue
            if column not in out:
                out[column] = float("nan")
            out.loc[where & out[column].isna(), column] = value
    return out


@st.cache_data(ttl=TTL_S, show_spinner=False)
def _run_config(root: str, run_id: str, hide: bool) -> dict | None:
    try:
        config = RunStore(Path(root)).run(run_id).config
    except (SfsdError, OSError, ValueError):
        return None
    return hide_paths(config) if hide else config


def run_config(run_id: str | None) -> dict | None:
    """A run's config alone, as `load_run` gives it (what a picker's label needs: a picker over every run read
    every run's frames); None if it does not exist or cannot be read."""
    return _run_config(store_root(), run_id, readonly()) if run_id else None


def load_run(run_id: str | None) -> RunView | None:
    """A run's config, status, result and frames (None if it does not exist or cannot be read)."""
    if not run_id:
        return None
    return _load_run(store_root(), run_id, readonly())


def empty_view(run_id: str = "") -> RunView:
    frame = pd.DataFrame
    return RunView(run_id, {}, {}, None, frame(columns=LAYER_COLUMNS), frame(columns=SNAPSHOT_COLUMNS),
                   frame(columns=EVALUATION_COLUMNS), frame(columns=TRIAL_COLUMNS))


@st.cache_data(ttl=30, show_spinner=False)
def _spectra(root: str, run_id: str, layer: str | None) -> pd.DataFrame:
    try:
        return spectra_frame(RunStore(Path(root)).run(run_id), layer)
    except (SfsdError, OSError, ValueError):
        return pd.DataFrame(columns=["layer", "block", "role", "kind", "index", "value"])


def spectra(run_id: str, layer: str | None = None, role: str | None = None) -> pd.DataFrame:
    """The stored spectra of a run: one layer, one role (all blocks) or everything."""
    frame = _spectra(store_root(), run_id, layer)
    if role is not None and not frame.empty:
        frame = frame[frame["role"] == role]
    return frame.reset_index(drop=True)


# ---- uniform runs (Table 1) -----------------------------------------------------------------------------

UNIFORM_METHODS = (BASE, *METHODS)  # Table 1's rows: the base model, then every method in registry order


def _number(value: Any) -> float | None:
    """A count that may be stored as a number or as {seq_len: number}."""
    if isinstance(value, dict):
        value = next(iter(value.values()), None)
    # numbers.Real includes numpy's (a frame's int64 column gives numpy integers, not ints)
    if isinstance(value, numbers.Real) and not math.isnan(float(value)):
        return float(value)
    return None


def uniform_row(view: RunView) -> dict:
    """One row of Table 1 from a uniform run: protocol, params, MACs, accuracy per task, perplexity."""
    config, result = view.config, view.result or {}
    method = BASE if view.method == "none" else view.method
    calibration = config.get("calibration") if isinstance(config.get("calibration"), dict) else {}
    row = {"run_id": view.run_id, "origin": view.origin, "model": view.model, "method": method,
           "beta": config.get("beta"), "factors": config.get("factors", TWO_FACTOR),
           "calibration_stream": config.get("calibration_stream", options.OPEN_LOOP),
           "last_blocks": config.get("last_blocks"), "state": view.state,
           "calibration": "{source} {samples}x{seq_len}".format(**{"source": "?", "samples": "?", "seq_len": "?",
                                                                    **calibration}),
           "limit": config.get("limit"), "tasks": ",".join(config.get("tasks") or []),
           "params": _number(result.get("params")), "macs": _number(result.get("macs")),
           "overall_budget": _number(result.get("overall_budget"))}
    for record in view.evaluations.to_dict("records"):
        kind = record.get("kind")
        if kind == "task":
            value, n = _number(record.get("acc")), _number(record.get("n"))
            if value is not None:
                row[f"acc:{record.get('task')}"] = value
                row[f"n:{record.get('task')}"] = n
        elif kind == "ppl" and _number(record.get("ppl")) is not None:
            row.update(ppl_cells(record))
    tasks = [key for key in row if key.startswith("acc:")]
    row["avg"] = sum(row[key] for key in tasks) / len(tasks) if tasks else None
    return row


def uniform_frame() -> pd.DataFrame:
    """Table 1 rows of every uniform run in the store (newest first)."""
    rows = []
    for run_id in list_runs(kind="uniform")["run_id"]:
        view = load_run(run_id)
        if view is not None:
            rows.append(uniform_row(view))
    base = ["run_id", "model", "method", "beta", "factors", "calibration_stream", "last_blocks", "state",
            "calibration", "limit", "tasks", "params", "macs", "overall_budget", "origin"]
    frame = pd.DataFrame(rows)
    accs = sorted(c for c in frame.columns if c.startswith("acc:"))
    ns = sorted(c for c in frame.columns if c.startswith("n:"))
    ppls = sorted((c for c in frame.columns if c.startswith("ppl")), key=lambda c: (len(c), c))
    beside = [f"{part}:{c}" for c in ppls for part in PPL_PARTS]  # each perplexity's interval and tokens
    return frame.reindex(columns=[*base, *accs, "avg", *ppls, *ns, *beside])


def _base_row_for(uniform: pd.DataFrame, rows: pd.DataFrame, model: str) -> pd.DataFrame:
    """The base model does not depend on beta or the blocks: a protocol without a base run of its own borrows
    the model's base run evaluated on the same tasks and documents (else none)."""
    if rows.empty or BASE in set(rows["method"]):
        return rows.iloc[0:0]
    bases = uniform[(uniform["model"] == model) & (uniform["method"] == BASE)]
    for column in ("tasks", "limit"):
        if column in bases and column in rows:
            bases = bases[bases[column].astype(str) == str(rows[column].iloc[0])]
    return bases.iloc[0:1]


# A protocol: the paper's (model, beta, last N blocks), and how its layers were made (the factor format and the
# calibration stream; the paper's are two factors, open loop). Each is a Table 1 of its own.
PROTOCOL_KEYS = ["model", "beta", "last_blocks", "factors", "calibration_stream"]
PAPER_FORMAT = {"factors": TWO_FACTOR, "calibration_stream": options.OPEN_LOOP}


def protocol_label(protocol: dict) -> str:
    """'SmolLM2-135M · beta 0.46 · last 11 blocks', then the format when it is not the paper's."""
    label = f"{model_display(str(protocol['model']))} · beta {protocol['beta']} · last {protocol['last_blocks']} blocks"
    extra = [str(protocol.get(k)) for k, paper in PAPER_FORMAT.items() if protocol.get(k, paper) != paper]
    return " · ".join([label, *extra])


def is_base_evaluation(method: Any, last_blocks: Any) -> bool:
    """Whether a uniform run is a base evaluation: the base model with no block compressed (what `sfsd frontier`
    stores first, beta 1.0 and last 0 blocks). It is the model's reference, which a Table 1 protocol of the same
    tasks and documents borrows as its base row, not a protocol of its own."""
    blocks = _number(last_blocks)
    return method in (BASE, "none") and (blocks is None or blocks < 1)


def table1_protocols(uniform: pd.DataFrame) -> list[dict]:
    """The Table 1 protocols (PROTOCOL_KEYS) of the uniform runs, in the order the page offers them:
    newest first, those holding only a base-model run last. Base evaluations are no protocol (see
    `is_base_evaluation`), nor is a row whose protocol fields are missing."""
    if uniform.empty:
        return []
    keep = [not is_base_evaluation(m, b) and isinstance(model, str) and _number(beta) is not None
            and _number(b) is not None
            for model, m, beta, b in zip(uniform["model"], uniform["method"], uniform["beta"], uniform["last_blocks"],
                                         strict=True)]
    rows = uniform[keep]
    if rows.empty:
        return []
    rows = rows.assign(**{k: rows[k].fillna(v) if k in rows else v for k, v in PAPER_FORMAT.items()})
    compressed = set(rows[rows["method"] != BASE][PROTOCOL_KEYS].apply(tuple, axis=1))
    groups = rows[PROTOCOL_KEYS].drop_duplicates()
    groups = groups.assign(only_base=~groups.apply(tuple, axis=1).isin(compressed))
    return groups.sort_values("only_base", kind="stable")[PROTOCOL_KEYS].to_dict("records")


def base_evaluations(uniform: pd.DataFrame) -> pd.DataFrame:
    """The base evaluations among the uniform runs (see `is_base_evaluation`), newest first."""
    if uniform.empty:
        return uniform
    keep = [is_base_evaluation(m, b) for m, b in zip(uniform["method"], uniform["last_blocks"], strict=True)]
    return uniform[keep].reset_index(drop=True)


# The limits of the Weight vs feature page's form (pages/5_Weight_vs_feature.py `settings`): what a stored
# config may put into its widgets as a starting value.
FORM_LIMITS = {"beta": (0.05, 1.0), "last_blocks": (1, None), "limit": (1, 10000), "samples": (1, 4096),
               "ppl_seq_len": (16, 4096)}


def _within(value: Any, name: str, whole: bool = True) -> Any:
    """`value` if it is a number within FORM_LIMITS[name] (an int when `whole`), else None."""
    number = _number(value)
    low, high = FORM_LIMITS[name]
    if number is None or (whole and number != int(number)) or number < low or (high is not None and number > high):
        return None
    return int(number) if whole else number


def protocol_defaults(config: dict | None, protocol: dict | None = None) -> dict:
    """Starting values of the form for new uniform runs, from a stored run's config and the protocol picked
    (which wins for model, beta and blocks): each one checked against what the form's widgets take
    (FORM_LIMITS, the offline tasks); a value that fails is left out, and the option's default applies. A base
    evaluation gives no beta or blocks: it compressed nothing."""
    from sfsd.data import OFFLINE_TASKS

    config = config if isinstance(config, dict) else {}
    source = {**config, **(protocol or {})}
    out: dict[str, Any] = {}
    if isinstance(source.get("model"), str) and source["model"]:
        out["model"] = source["model"]
    if not is_base_evaluation(source.get("method"), source.get("last_blocks")):
        if _within(source.get("beta"), "beta", whole=False) is not None:
            out["beta"] = float(source["beta"])
        if _within(source.get("last_blocks"), "last_blocks") is not None:
            out["last_blocks"] = int(source["last_blocks"])
    for name, option in (("factors", options.FACTORS), ("calibration_stream", options.CALIBRATION_STREAM)):
        if source.get(name) in option.choices:  # a protocol's format, or the run's
            out[name] = source[name]
    if _within(config.get("limit"), "limit") is not None:
        out["limit"] = int(config["limit"])
    tasks = config.get("tasks")
    if isinstance(tasks, list):
        out["tasks"] = [t for t in tasks if t in OFFLINE_TASKS]
    calibration = config.get("calibration")
    if isinstance(calibration, dict):
        from sfsd.compress import CalibrationSpec

        fields = {k: v for k, v in calibration.items() if k in CalibrationSpec.__dataclass_fields__}
        if _within(fields.get("samples"), "samples") is None:
            fields.pop("samples", None)
        try:
            CalibrationSpec(**fields)
        except (SfsdError, TypeError, ValueError):
            fields = {}
        out["calibration"] = fields
    seq_lens = config.get("ppl_seq_lens")
    if isinstance(seq_lens, list) and seq_lens and _within(seq_lens[0], "ppl_seq_len") is not None:
        out["ppl_seq_lens"] = [int(seq_lens[0])]
    tokens = config.get("ppl_tokens", 0)
    if tokens is None or (_number(tokens) is not None and _number(tokens) >= 1):  # None: every token
        out["ppl_tokens"] = None if tokens is None else int(tokens)
    return out


def same_format(uniform: pd.DataFrame, factors: str = TWO_FACTOR,
                calibration_stream: str = options.OPEN_LOOP) -> pd.DataFrame:
    """The uniform runs made in one factor format and calibration stream (runs older than those fields: the
    paper's)."""
    keep = pd.Series(True, index=uniform.index)
    for column, value in (("factors", factors), ("calibration_stream", calibration_stream)):
        if column in uniform:
            keep &= uniform[column].fillna(PAPER_FORMAT[column]) == value
        elif value != PAPER_FORMAT[column]:
            keep &= False
    return uniform[keep]


def table1_rows(uniform: pd.DataFrame, model: str, beta: Any, last_blocks: Any, factors: str = TWO_FACTOR,
                calibration_stream: str = options.OPEN_LOOP) -> pd.DataFrame:
    """The uniform runs of one protocol (model, beta, last N blocks, factor format, calibration stream), one per
    method, in Table 1's order; the paper's Table 1 is two factors, open loop (the defaults). The base row may
    be borrowed (`_base_row_for`): the base model has no format."""
    made = same_format(uniform, factors, calibration_stream)
    rows = made[(made["model"] == model) & (made["beta"] == beta) & (made["last_blocks"] == last_blocks)]
    rows = pd.concat([_base_row_for(uniform, rows, model), rows])
    order = {m: i for i, m in enumerate(UNIFORM_METHODS)}
    rows = rows.sort_values("method", key=lambda s: s.map(lambda m: order.get(m, len(order))), kind="stable")
    return rows.drop_duplicates("method").reset_index(drop=True)


# ---- intervals, reference rates and warnings (every accuracy shown carries n and a 95% interval) ---------

EMPTY = "—"  # how an empty cell reads
SMALL_N = 30  # fewer documents than this: an accuracy's interval is wider than about +/- 18 points
PPL_BLOWUP = 10.0  # perplexity above this multiple of the base model's: its accuracies mean nothing


def n_column(column: str) -> str:
    """The count column that goes with an accuracy column: acc:piqa, acc_norm:piqa -> n:piqa."""
    return "n:" + column.split(":", 1)[1]


def counts(rows: pd.DataFrame, column: str) -> pd.Series:
    """The document counts of an accuracy column as numbers (NaN where unknown or the column is missing)."""
    if n_column(column) not in rows:
        return pd.Series(float("nan"), index=rows.index)
    return pd.to_numeric(rows[n_column(column)], errors="coerce")


def number_text(value: Any, digits: int = 2) -> str:
    """A number for a table cell with thousands separators; empty ones read as an em dash."""
    number = _number(value)
    if number is None:
        return EMPTY
    return f"{number:,.{digits if abs(number) < 1000 else 0}f}"


@st.cache_data(show_spinner=False)
def reference_rates(task: str, n: int | None = None) -> dict:
    """What an accuracy of `task` must beat, over the first n rows of its eval split (the documents an
    evaluation with limit n scores): `majority` (share of the most common gold label: the accuracy of
    always giving that answer), `majority_label` (its text), `chance` (mean of 1 / number of choices)."""
    from sfsd.data import load_task

    try:
        rows = load_task(task, "eval")
    except (SfsdError, OSError, ValueError):
        rows = []  # not an offline task (e.g. a hub task): no reference
    rows = rows[: int(n)] if n else rows
    if not rows:
        return {"majority": float("nan"), "majority_label": "", "chance": float("nan"), "n": 0}
    labels = pd.Series([int(row["label"]) for row in rows])
    top = int(labels.value_counts().idxmax())
    texts = {str(row["choices"][top]) for row in rows if top < len(row["choices"])}
    return {"majority": float((labels == top).mean()),
            "majority_label": texts.pop() if len(texts) == 1 else f"choice {top}",
            "chance": float(sum(1 / len(row["choices"]) for row in rows) / len(rows)), "n": len(rows)}


def snapshot_documents(frames: list[pd.DataFrame], column: str) -> int | None:
    """The largest number of documents behind an accuracy column of snapshot tables (None: unknown)."""
    ns = pd.concat([counts(frame, column) for frame in frames]).dropna()
    return int(ns.max()) if len(ns) else None


def task_references(rows: pd.DataFrame) -> dict[str, dict]:
    """reference_rates of every task column of Table 1 rows, at the largest n the rows evaluated."""
    refs = {}
    for column in (c for c in rows.columns if c.startswith("acc:") and rows[c].notna().any()):
        ns = counts(rows, column).dropna()
        refs[column.removeprefix("acc:")] = reference_rates(column.removeprefix("acc:"),
                                                            int(ns.max()) if len(ns) else None)
    return refs


def _where_compressed(method: str, last_blocks) -> str:
    """Which blocks a Table 1 row changed: the last N, or (SliceGPT) the whole model at the same parameters."""
    if method == BASE:
        return EMPTY
    if method in METHODS.names() and METHODS.get(method).whole_model:
        return "whole model (same params as weight)"
    return f"last {int(last_blocks)} blocks" if _number(last_blocks) is not None else EMPTY


def table1_text(rows: pd.DataFrame) -> pd.DataFrame:
    """Table 1 for people: method, state, perplexity per window length first (the metric that separates
    the methods) with its 95% bootstrap interval over windows and their number (`ppl_column_text`), then
    size and every accuracy in % as `value [95% interval]`, n in the header (in the cell when the rows' n
    differ). Empty cells read as an em dash."""
    acc_cols = [c for c in rows.columns if c.startswith("acc:") and rows[c].notna().any()]
    ppl_cols = [c for c in rows.columns if c.startswith("ppl") and rows[c].notna().any()]
    out = pd.DataFrame({"method": rows["method"].astype(str), "state": rows["state"].astype(str)})
    for column in ppl_cols:
        header, cells = ppl_column_text(rows, column)
        out[header] = cells
    out["params (M)"] = [number_text(v / 1e6 if _number(v) is not None else None) for v in rows["params"]]
    out["MACs @128 tokens (G)"] = [number_text(v / 1e9 if _number(v) is not None else None, 3) for v in rows["macs"]]
    out["budget (%)"] = [number_text(100 * v if _number(v) is not None else None, 1) for v in rows["overall_budget"]]
    blocks = rows["last_blocks"] if "last_blocks" in rows else [None] * len(rows)
    out["compressed"] = [_where_compressed(m, b) for m, b in zip(rows["method"], blocks, strict=True)]
    for column in acc_cols:
        ns = counts(rows, column)
        shared = ns.dropna().unique()
        same = len(shared) == 1
        header = f"{column.removeprefix('acc:')} acc % [95% CI]" + (f" n={int(shared[0])}" if same else "")
        out[header] = [format_proportion(p, n, scale=100, digits=1, show_n=not same) if _number(p) is not None
                       and _number(n) is not None else EMPTY for p, n in zip(rows[column], ns, strict=True)]
    if len(acc_cols) > 1:  # one task: its own column says it all
        averages = []
        for _, row in rows.iterrows():
            values = [row[c] for c in acc_cols if _number(row[c]) is not None]
            ns = [_number(row.get(n_column(c))) for c in acc_cols if _number(row[c]) is not None]
            low, high = mean_interval(values, ns)
            averages.append(EMPTY if len(values) < len(acc_cols) or low != low else
                            f"{100 * sum(values) / len(values):.1f} [{100 * low:.1f}, {100 * high:.1f}]")
        out["average acc % [95% CI]"] = averages
    return out.reset_index(drop=True)


NO_INTERVAL = "(no CI)"  # a perplexity recorded before its interval was kept (PPL_NOTE says so)
PPL_NOTE = ("Perplexity: wiki eval split, non-overlapping windows of the length in the header (n windows); "
            f"[95% CI]: bootstrap over the windows ({PPL_BOOTSTRAP_RESAMPLES:,} resamples, seeded), which covers the "
            f"choice of windows from this text, not other text. {NO_INTERVAL}: recorded before perplexity intervals "
            "were kept.")


def ppl_text(value: Any, low: Any = None, high: Any = None) -> str:
    """'57.93 [55.12, 61.04]'; a value recorded without its interval reads '57.93 (no CI)'; none reads "—"."""
    if _number(value) is None:
        return EMPTY
    if _number(low) is None or _number(high) is None:
        return f"{format_ppl(_number(value))} {NO_INTERVAL}"
    return format_ppl(_number(value), _number(low), _number(high))


def ppl_column_text(rows: pd.DataFrame, column: str) -> tuple[str, list[str]]:
    """The header and cells of a perplexity column (`ppl@<seq_len>` with its `low:`, `high:` and `tokens:`
    cells, `sfsd.runs.frames.ppl_cells`): 'ppl @128 tokens [95% CI] n=128 windows', each cell `ppl_text`. The
    windows are the bootstrap's unit (tokens / window length); they go into each cell when the rows' differ."""
    def part(name: str) -> pd.Series:
        key = f"{name}:{column}"
        return pd.to_numeric(rows[key], errors="coerce") if key in rows else pd.Series(float("nan"), index=rows.index)

    seq_len = int(column.split("@", 1)[1]) if "@" in column else None
    low, high, tokens = part("low"), part("high"), part("tokens")

    def count(tokens_: float) -> str:
        return f"n={int(tokens_) // seq_len:,} windows" if seq_len else f"n={int(tokens_):,} tokens"

    shared = tokens[rows[column].notna()].dropna().unique()
    same = len(shared) == 1
    header = f"ppl{f' @{seq_len} tokens' if seq_len else ''} [95% CI]" + (f" {count(shared[0])}" if same else "")
    cells = [ppl_text(v, lo, hi) + ("" if same or _number(v) is None or _number(n) is None else f" ({count(n)})")
             for v, lo, hi, n in zip(rows[column], low, high, tokens, strict=True)]
    return header, cells


def table1_headline(rows: pd.DataFrame) -> str | None:
    """The sentence a slide would take from Table 1, computed from its rows: each method's perplexity as a
    multiple of the base model's at the budget they share (None without a base perplexity)."""
    from sfsd.dashboard.plots import method_label

    columns = [c for c in rows.columns if c.startswith("ppl@") and rows[c].notna().any()]
    bases = rows[rows["method"] == BASE]
    if not columns or bases.empty or _number(bases[columns[0]].iloc[0]) is None:
        return None
    column, base = columns[0], _number(bases[columns[0]].iloc[0])
    methods = rows[(rows["method"] != BASE) & rows[column].notna()]
    if methods.empty:
        return None
    parts = []
    for _, row in methods.iterrows():
        ratio = _number(row[column]) / base
        parts.append(f"{method_label(row['method'])} {ratio:,.{1 if ratio < 100 else 0}f}x"
                     + (" (broken)" if ratio > PPL_BLOWUP else ""))
    budgets = methods["overall_budget"].map(_number).dropna()
    at = (f"At {100 * budgets.min():.1f}%" if budgets.max() - budgets.min() < 0.005 else
          f"At {100 * budgets.min():.1f}-{100 * budgets.max():.1f}%") + " of the decomposable parameters"
    return (f"{at}, perplexity ({column.removeprefix('ppl@')}-token windows) as a multiple of the base model's "
            f"{base:,.2f}: " + ", ".join(parts) + ".")


def table1_warnings(rows: pd.DataFrame) -> list[str]:
    """Why some of Table 1's numbers cannot carry weight: tasks with fewer than SMALL_N documents, and
    models whose perplexity is more than PPL_BLOWUP times the base model's (their accuracy is then the
    rate of a degenerate answer, not a measure of the method)."""
    notes = []
    for column in (c for c in rows.columns if c.startswith("acc:") and rows[c].notna().any()):
        ns = counts(rows, column).dropna()
        if len(ns) and ns.min() < SMALL_N:
            notes.append(f"{column.removeprefix('acc:')}: only {int(ns.min())} documents (fewer than {SMALL_N}): "
                         f"its 95% intervals are wider than the differences between methods; evaluate more documents.")
    base = rows[rows["method"] == BASE]
    for column in (c for c in rows.columns if c.startswith("ppl") and rows[c].notna().any()):
        reference = _number(base[column].iloc[0]) if not base.empty else None
        if not reference:
            continue
        broken = [f"{r['method']} ({r[column]:,.0f})" for _, r in rows.iterrows()
                  if _number(r[column]) is not None and r[column] > PPL_BLOWUP * reference]
        if broken:
            notes.append(f"{column}: perplexity above {PPL_BLOWUP:g}x the base model's ({reference:,.2f}) for "
                         f"{', '.join(broken)}: these models are broken, their accuracy only shows which answer "
                         "they always give (compare with the majority-class line).")
    return notes


def interval_columns(frame: pd.DataFrame, scale: float = 100.0) -> pd.DataFrame:
    """A copy of a frame with `acc:<task>` / `acc_norm:<task>` columns (and their `n:<task>` counts) where
    each accuracy is text: `value [95% interval]` in % (snapshots, evaluations of a run)."""
    out = frame.copy()
    for column in [c for c in frame.columns if ":" in c and c.split(":", 1)[0] in ("acc", "acc_norm")]:
        out[column] = [format_proportion(p, n, scale=scale, digits=1, show_n=False)
                       if _number(p) is not None and _number(n) is not None else EMPTY
                       for p, n in zip(frame[column], counts(frame, column), strict=True)]
        out = out.rename(columns={column: f"{column} % [95% CI]"})
    return out


def snapshot_table(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Snapshot rows of several runs (each with `run_id` and `method` columns) for people: what the rows
    measured first (method, step, parameters, budget, metric, accuracies with their interval and n), the
    time and run id last, so that nothing that matters is cut off at the table's right edge."""
    frame = interval_columns(pd.concat(frames, ignore_index=True))
    for column in [c for c in frame.columns if c.startswith("n:")]:
        frame[column] = [EMPTY if _number(n) is None else f"{_number(n):.0f}" for n in frame[column]]
    first = [c for c in ("method", "step", "params", "budget", "metric") if c in frame]
    measured = [c for c in frame.columns if c.endswith("[95% CI]") or c.startswith("n:")]
    last = [c for c in ("time", "run_id") if c in frame]
    rest = [c for c in frame.columns if c not in {*first, *measured, *last}]
    frame = frame[[*first, *measured, *rest, *last]].copy()
    # units people read: millions of parameters, budget in %, the time of day (UTC)
    if "params" in frame:
        frame["params"] = [number_text(v / 1e6 if _number(v) is not None else None, 3) for v in frame["params"]]
    if "budget" in frame:
        frame["budget"] = [number_text(100 * v if _number(v) is not None else None, 2) for v in frame["budget"]]
    if "metric" in frame:
        frame["metric"] = [number_text(v, 3) for v in frame["metric"]]
    if "time" in frame:
        times = pd.to_datetime(frame["time"], utc=True, errors="coerce")
        frame["time"] = [EMPTY if pd.isna(t) else t.strftime("%m-%d %H:%M:%S") for t in times]
    return frame.rename(columns={"params": "params (M)", "budget": "budget %", "time": "time (UTC)"})


def tolerance_text(metric: str | None, tolerance: float | None, task: str | None = None) -> str:
    """What a search keeps, in the metric's own terms: perplexity within +5% of the threshold (a relative
    increase), a task's accuracy within 5 points (an absolute drop; `sfsd.options.TOLERANCE`)."""
    name = f"{metric}/{task}" if metric == "task" and task else str(metric)
    if tolerance is None:
        return name
    return f"{name} +{100 * tolerance:g}%" if metric == "ppl" else f"{name} −{100 * tolerance:g} pts"


def target_budget_text(strategy: str | None, target: float) -> str:
    """An allocation run: its strategy and target overall budget (it has no tolerance)."""
    return f"{strategy} to {100 * target:g}% budget"


def _target_text(row: dict, number) -> str:
    metric, tolerance, budget = row.get("metric"), number(row.get("tolerance")), number(row.get("target_budget"))
    if not isinstance(metric, str):
        return EMPTY
    if budget is not None:
        return target_budget_text(row.get("strategy"), budget)  # the metric is in the run id
    return tolerance_text(metric, tolerance)


def runs_text(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs table as shown: overall budget and tolerance as text, counts as integers, progress a fraction
    (0 where unknown), every empty cell "—" (never "None" or "<NA>")."""
    out = runs.copy()

    def _number(value: Any) -> float | None:  # numpy numbers included; NA, None and text are empty
        return float(value) if pd.api.types.is_number(value) and not pd.isna(value) else None

    if "progress" in out:
        out["progress"] = pd.to_numeric(out["progress"], errors="coerce").fillna(0.0)
    if "overall_budget" in out:
        out["overall_budget"] = [EMPTY if _number(v) is None else f"{100 * _number(v):.1f}"
                                 for v in out["overall_budget"]]
    if "tolerance" in out:
        # What a run aims at: a metric within a tolerance, or (an allocation) an overall budget B, whose
        # config's tolerance is unused (alg1 finds its own).
        out["target"] = [_target_text(row, _number) for row in out.to_dict("records")]
        out["tolerance"] = [EMPTY if _number(v) is None else f"{_number(v):g}" for v in out["tolerance"]]
    for column in ("layers_done", "layers_total", "pid"):
        if column in out:
            out[column] = [EMPTY if _number(v) is None else f"{_number(v):.0f}" for v in out[column]]
    text = [c for c in out.columns if c != "progress"]
    out[text] = out[text].astype(object).where(out[text].notna(), EMPTY)
    out[text] = out[text].map(lambda v: EMPTY if v in ("", "None", "<NA>", "nan") else v)
    return out


def evaluations_text(evaluations: pd.DataFrame) -> pd.DataFrame:
    """A run's evaluations with acc and acc_norm as `value [95% interval] (n=...)` in %, perplexity as
    `value [95% interval]` (`ppl_text`; its seq_len and n_tokens in their own columns); empty cells "—"."""
    out = evaluations.copy()
    if "ppl" in out:
        bounds = [out[c] if c in out else pd.Series(None, index=out.index) for c in ("ppl_low", "ppl_high")]
        out["ppl"] = [ppl_text(*cells) for cells in zip(out["ppl"], *bounds, strict=True)]
        out = out.drop(columns=[c for c in ("ppl_low", "ppl_high") if c in out])
        out = out.rename(columns={"ppl": "ppl [95% CI]"})
    if "n" not in out:
        return out.astype(object).where(out.notna(), EMPTY)
    for column in ("acc", "acc_norm"):
        if column in out:
            out[column] = [format_proportion(p, n, scale=100, digits=1) if _number(p) is not None
                           and _number(n) is not None else EMPTY for p, n in zip(out[column], out["n"], strict=True)]
            out = out.rename(columns={column: f"{column} % [95% CI]"})
    out["n"] = [EMPTY if _number(n) is None else f"{_number(n):.0f}" for n in out["n"]]  # a count, not 5.0
    for column in [c for c in out.columns if pd.api.types.is_float_dtype(out[c])]:
        whole = bool((out[column].dropna() % 1 == 0).all())  # counts such as seq_len stored as floats
        out[column] = out[column].map(lambda v, whole=whole: number_text(v, 0 if whole else 2))
    last = [c for c in ("lm_eval_version", "time") if c in out]  # the numbers first, their provenance last
    out = out[[c for c in out.columns if c not in last] + last]
    return out.astype(object).where(out.notna(), EMPTY)


# ---- models ---------------------------------------------------------------------------------------------


def _meta_model(source: str):
    """The model's modules on the meta device: its structure without reading any weight."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import sfsd  # noqa: F401  registers the compressed classes

    config = AutoConfig.from_pretrained(source)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config), config


@st.cache_resource(show_spinner="Reading the model's structure...")
def model_summary(name: str) -> dict:
    """Architecture, blocks, roles, parameters and per-role shapes of a model, from its config alone
    (`sfsd.compress.describe(model, macs=False)` on a weightless copy)."""
    from sfsd.compress import describe
    from sfsd.models import resolve_model

    source = resolve_model(name)
    model, config = _meta_model(source)
    info = describe(model, macs=False)
    table = info.pop("table")
    roles = (table.groupby("role", sort=False)
             .agg(layers=("name", "size"), d_in=("d_in", "first"), d_out=("d_out", "first"),
                  params=("params_full", "sum"))
             .reset_index())
    roles["share_of_linear_%"] = 100 * roles["params"] / max(1, int(roles["params"].sum()))
    info.update(
        name=name, source=source,
        architecture=", ".join(getattr(config, "architectures", None) or [type(model).__name__]),
        hidden_size=getattr(config, "hidden_size", getattr(config, "n_embd", None)),
        vocab_size=getattr(config, "vocab_size", None),
        heads=getattr(config, "num_attention_heads", getattr(config, "n_head", None)),
        kv_heads=getattr(config, "num_key_value_heads", None),
        roles_table=roles, layers_table=table,
    )
    return info


def model_blocks(name: str) -> int | None:
    """Number of decoder blocks of a model, from its config.json (None if it cannot be read cheaply)."""
    from sfsd.models import BUNDLED, resolve_model

    try:
        if name in BUNDLED and not (models_dir() / name / "config.json").exists():
            return None  # not converted yet: the search converts it
        source = Path(resolve_model(name))
        config = json.loads((source / "config.json").read_text())
    except (SfsdError, OSError, ValueError):
        return None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    text = config.get("text_config")
    if isinstance(text, dict) and isinstance(text.get("num_hidden_layers"), int):
        return text["num_hidden_layers"]
    return None


def compressed_method(folder: str) -> str | None:
    """The sfsd method recorded in a compressed folder's config.json, or that of the Table 1 run the folder
    will be saved from (None for a plain model)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        view = table1_run(folder)
        return view.method if view is not None else None
    return config.get("sfsd_method")


def model_choices() -> list[str]:
    """Models to compare: the default and demo models, the models of runs, every folder under cache/models/
    (compressed ones included) and Table 1's compressed models (saved there when first used)."""
    names = [DEFAULT_MODEL, demo_model()]
    names += [str(model) for model in list_runs()["model"].dropna()]
    root = models_dir()
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if (folder / "config.json").exists() and folder.name != DEFAULT_MODEL:
                names.append(str(folder))
    names += table1_models()
    return list(dict.fromkeys(names))


def table1_models() -> list[str]:
    """The folders (<cache>/models/<run id>) of every finished compressed uniform run, newest first, saved or
    not yet (`jobs.save_uniform_model` saves one when a page first needs it)."""
    runs = list_runs(kind="uniform")
    runs = runs[(runs["state"] == "done") & (runs["method"] != "none")]
    return [str(models_dir() / run_id) for run_id in runs["run_id"]]


def table1_run(folder: str) -> RunView | None:
    """The uniform run whose model `folder` is (None for any other folder)."""
    path = Path(folder)
    if path.parent != models_dir() or not path.name.startswith("uniform-"):
        return None
    view = load_run(path.name)
    return view if view is not None and view.kind == "uniform" else None


def unsaved_table1_runs(folders: list[str]) -> list[str]:
    """The run ids of the Table 1 models among `folders` that are not saved yet."""
    return [Path(f).name for f in folders if table1_run(f) is not None and not (Path(f) / "config.json").exists()]


def saved_model_runs(run_ids: list[str]) -> list[str]:
    """The runs among `run_ids` whose model is saved under cache/models/<run id> (what `--with-model` exports)."""
    return [run_id for run_id in run_ids if (models_dir() / run_id / "config.json").is_file()]


def model_display(name: str) -> str:
    view = table1_run(name)
    if view is not None:  # a Table 1 row: say which, saved or not
        suffix = view.run_id.rsplit("-", 1)[-1][:6]
        return (f"Table 1: {view.method}, beta {view.config.get('beta')}, last {view.config.get('last_blocks')} "
                f"blocks · {suffix}")
    method = compressed_method(name) if Path(name).is_dir() else None
    short = Path(name).name if ("/" in name or os.sep in name) else name
    return f"{short} [{method}]" if method else short


@st.cache_resource(max_entries=3, show_spinner="Loading the model...")
def load_model(name: str):
    """(model, tokenizer) on the default device, loaded once per process."""
    from sfsd.models import load_model as load

    return load(name)


# ---- evaluations on demand (Disagreement and Bias pages) ------------------------------------------------


@st.cache_data(max_entries=16, show_spinner=False)
def task_records(model: str, tasks: tuple[str, ...], limit: int | None) -> pd.DataFrame:
    """Per-document multiple-choice records of a model on the eval split (sfsd.evaluate caches them on disk)."""
    from sfsd.evaluate import evaluate_tasks

    require_writable("evaluate models")  # computes for minutes and writes the evaluation cache
    loaded, tokenizer = load_model(model)
    # a Table 1 model is keyed like its run's own evaluations: the documents that run scored are not scored again
    key = Path(model).name if table1_run(model) is not None else None
    return evaluate_tasks(loaded, tokenizer, list(tasks), split="eval", limit=limit, model_key=key).records


@st.cache_data(show_spinner=False)
def task_rows(task: str) -> pd.DataFrame:
    """The eval-split rows of an offline task, indexed by their id (doc_id of the records)."""
    from sfsd.data import load_task

    return pd.DataFrame(load_task(task, "eval")).set_index("id")


def flip_table(records_a: pd.DataFrame, records_b: pd.DataFrame, task: str, metric: str = "acc") -> pd.DataFrame:
    """The documents whose prediction flipped from model A to model B, with their text, gold answer, both
    predictions and both models' per-choice log-likelihoods."""
    from sfsd.evaluate import flips

    changed = flips(records_a, records_b, task, metric)
    columns = ["doc_id", "direction", "question", "gold", "pred_a", "pred_b", "loglik_a", "loglik_b"]
    if changed.empty:
        return pd.DataFrame(columns=columns)
    rows = task_rows(task)
    loglik = {name: frame[frame["task"] == task].set_index("doc_id")["loglik"]
              for name, frame in (("a", records_a), ("b", records_b))}

    def choice(doc_id: str, index: int) -> str:
        try:
            return f"{index}: {rows.loc[doc_id, 'choices'][index]}"
        except (KeyError, IndexError, TypeError):
            return str(index)

    def lls(which: str, doc_id: str) -> str:
        values = loglik[which].get(doc_id)
        return EMPTY if values is None else ", ".join(f"{float(v):.2f}" for v in values)

    out = pd.DataFrame({
        "doc_id": changed["doc_id"], "direction": changed["direction"],
        "question": [str(rows.loc[d, "query"]) if d in rows.index else EMPTY for d in changed["doc_id"]],
        "gold": [choice(d, g) for d, g in zip(changed["doc_id"], changed["gold"], strict=True)],
        "pred_a": [choice(d, p) for d, p in zip(changed["doc_id"], changed["pred_a"], strict=True)],
        "pred_b": [choice(d, p) for d, p in zip(changed["doc_id"], changed["pred_b"], strict=True)],
        "loglik_a": [lls("a", d) for d in changed["doc_id"]],
        "loglik_b": [lls("b", d) for d in changed["doc_id"]],
    })
    return out[columns]


# ---- page defaults and checks (issue 28: every page tells one true story by default) --------------------


def _cell_text(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return EMPTY
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.6g}"
    return str(value)


def empty_cells_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """A frame for a table: each column holding an empty cell (None, NaN, <NA>) or values of several types as
    text, EMPTY in the empty cells (a number column with a gap shows "None"; a mixed one is refused by Arrow);
    other columns keep their type."""
    out = frame.copy()
    for column in out.columns:
        values = out[column]
        mixed = values.dtype == object and len({type(v) for v in values.dropna()}) > 1
        if mixed or values.isna().any():
            out[column] = [_cell_text(value) for value in values]
    return out


def disagreement_text(summary: pd.DataFrame) -> pd.DataFrame:
    """`sfsd.evaluate.disagreement`'s table as the Disagreement page and the report show it: n, disagreement,
    both accuracies and the delta, each with its 95% interval, in headed columns."""
    from sfsd.evaluate.compare import disagreement_report

    return disagreement_report(summary)[["task", "n", "disagreement", "acc_a", "acc_b", "delta"]].rename(columns={
        "n": "n (documents)", "acc_a": "acc A % [95% CI]", "acc_b": "acc B % [95% CI]",
        "delta": "delta B - A, points [95% CI]", "disagreement": "disagreement, % of n [95% CI]"})


def filled(frame: pd.DataFrame) -> pd.DataFrame:
    """A frame for a table: every empty cell (None, NaN, <NA>) reads EMPTY."""
    return frame.astype(object).where(frame.notna(), EMPTY)


def same_method_groups(runs: pd.DataFrame) -> dict[tuple[str, str], list[str]]:
    """The runs of `runs` grouped by (method, model), newest first within a group, groups by their newest run:
    the only runs a heatmap may average (Figure 3 averages searches of one method, over tasks or seeds)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for row in runs.itertuples():
        groups.setdefault((str(row.method), str(row.model)), []).append(row.run_id)
    return groups


def heatmap_cells_text(cells: pd.DataFrame) -> pd.DataFrame:
    """`plots.heatmap_cells` for people: retained % (mean, and min, max, std over runs when several), rank, the
    layer; an undecided cell reads EMPTY."""
    out = pd.DataFrame({"block": cells["block"].astype(int), "role": cells["role"].astype(str),
                        "retained %": [number_text(v, 1) for v in cells["retained_pct"]]})
    if "runs" in cells and (pd.to_numeric(cells["runs"], errors="coerce").fillna(0) > 1).any():
        for name in ("min", "max", "std"):
            out[f"retained % {name}"] = [number_text(v, 1) for v in cells[f"retained_{name}"]]
        out["runs"] = [number_text(v, 0) for v in cells["runs"]]
    out["rank"] = [number_text(v, 0 if _number(v) is None or float(v).is_integer() else 1) for v in cells["rank"]]
    out["d_in"] = [number_text(v, 0) for v in cells["d_in"]]
    out["d_out"] = [number_text(v, 0) for v in cells["d_out"]]
    out["layer"] = cells["layer"].astype(str)
    return filled(out)


def comparison_runs(runs: pd.DataFrame) -> list[str]:
    """The runs an overlay starts with: the newest run of each method on the newest run's model (the demo's
    feature-versus-weight comparison), not the newest runs whatever they are."""
    if runs.empty:
        return []
    model = runs["model"].iloc[0]
    same = runs[runs["model"] == model]
    return list(same.drop_duplicates("method")["run_id"])


def base_accuracy(model: str, column: str, n: int | None) -> dict | None:
    """The base model's accuracy in `column` (acc:<task>) from a uniform run of the base model on the same task and
    the same number of documents (the first n of the eval split): {value, n, params, run_id}; None when no such
    run was stored."""
    uniform = uniform_frame()
    if uniform.empty or column not in uniform or n is None:
        return None
    rows = uniform[(uniform["model"] == model) & (uniform["method"] == BASE)].dropna(subset=[column])
    rows = rows[counts(rows, column) == n]
    if rows.empty:
        return None
    row = rows.iloc[0]
    return {"value": float(row[column]), "n": int(n), "params": _number(row["params"]), "run_id": row["run_id"]}


def perplexity_vs_base(model: str) -> dict | None:
    """A compared model's perplexity against its base model's, from the run that made it: {ppl, base, ratio,
    where, run_id}; None without such data (a plain model, a run without a perplexity). A Table 1 model: its
    wiki eval perplexity against the base model's uniform run at the same window; a saved search: its held-out
    check (eval split, perplexity searches)."""
    view = run_of_model(model)
    return run_vs_base(view) if view is not None else None


def run_of_model(folder: str) -> RunView | None:
    """The run that made a compared folder: its Table 1 run, or the search run it was saved from (None for a
    plain model or a folder of unknown origin)."""
    view = table1_run(folder)
    if view is None and Path(folder).parent == models_dir():
        view = load_run(Path(folder).name)
    return view


def run_vs_base(view: RunView) -> dict | None:
    """`perplexity_vs_base` of the model a run made: a search's held-out check, a uniform run's wiki eval
    perplexity against the base model's uniform run at the same window."""
    if view.kind == "search":
        held = (view.result or {}).get("heldout") or {}
        if held.get("metric") != "ppl" or not held.get("base") or not held.get("final"):
            return None
        ppl, base = _number(held["final"].get("value")), _number(held["base"].get("value"))
        where = f"eval split, {int(held['final'].get('n') or 0):,} tokens, run {view.run_id}"
    else:
        row = uniform_row(view)
        columns = [c for c in row if c.startswith("ppl") and _number(row[c]) is not None]
        uniform = uniform_frame()
        if uniform.empty:
            return None
        bases = uniform[(uniform["model"] == view.model) & (uniform["method"] == BASE)]
        column = next((c for c in columns if c in bases and bases[c].notna().any()), None)
        if column is None:
            return None
        ppl, base = row[column], _number(bases[column].dropna().iloc[0])
        where = f"wiki eval, {column.removeprefix('ppl@')}-token windows, run {view.run_id}"
    if ppl is None or not base:
        return None
    return {"ppl": ppl, "base": base, "ratio": ppl / base, "where": where, "run_id": view.run_id}


def of_model(folder: str, model: str) -> bool:
    """Whether `folder` is `model` itself or was compressed from it (`run_of_model`)."""
    view = run_of_model(folder)
    return folder == model or (view is not None and view.model == model)


def broken_models(models: list[str]) -> list[tuple[str, dict]]:
    """(model, perplexity_vs_base) of each of `models` whose perplexity is above PPL_BLOWUP x its base model's."""
    out = []
    for model in models:
        facts = perplexity_vs_base(model)
        if facts is not None and facts["ratio"] > PPL_BLOWUP:
            out.append((model, facts))
    return out


STEREOSET_SEED = 0


def stratified_sample(rows: list[dict], per_cell: int, keys: tuple[str, ...] = ("type", "bias_type"),
                      seed: int = STEREOSET_SEED) -> list[dict]:
    """Up to `per_cell` rows of every stratum (one value of each of `keys`), drawn without replacement with a
    seeded generator, in file order: every domain is in the sample, where the first N rows may leave one out
    (StereoSet's religion rows are 2% of the set)."""
    import random

    strata: dict[tuple, list[int]] = {}
    for index, row in enumerate(rows):
        strata.setdefault(tuple(row.get(k) for k in keys), []).append(index)
    chosen: list[int] = []
    for stratum in sorted(strata, key=str):
        members = strata[stratum]
        chosen += random.Random(f"{seed}/{stratum}").sample(members, min(per_cell, len(members)))
    return [rows[i] for i in sorted(chosen)]


@st.cache_data(max_entries=16, show_spinner=False)
def bias_summary(model: str, per_cell: int) -> pd.DataFrame:
    """StereoSet LMS, SS, ICAT with 95% intervals and n per sentence type (intrasentence, intersentence, all) and
    bias type of a model, on a stratified sample: `per_cell` examples of every sentence type and domain
    (`stratified_sample`), cached on disk by sfsd.evaluate under the sample's own key."""
    from sfsd.data import load_stereoset
    from sfsd.evaluate import stereoset

    require_writable("score models")  # computes for minutes and writes the evaluation cache
    rows = stratified_sample(list(load_stereoset(split="all")), per_cell)
    loaded, tokenizer = load_model(model)
    return stereoset(loaded, tokenizer, split="all", rows=rows, progress=False).summary


def runs_with_both_spectra(run_ids: list[str]) -> list[str]:
    """The runs among `run_ids` that stored two spectra per layer (their method's and the weight's): the ones
    that show feature space against weight space."""
    return [run_id for run_id in run_ids if spectra(run_id)["kind"].nunique() > 1]


def energy_text(energy: pd.DataFrame) -> pd.DataFrame:
    """`plots.energy_table` for people: energy shares with two decimals, an empty one EMPTY."""
    out = energy.copy()
    for column in [c for c in out.columns if c.startswith("energy")]:
        out[column] = [number_text(v, 2) for v in out[column]]
    return filled(out)


def with_base_accuracy(frame: pd.DataFrame, snapshots: pd.DataFrame, model: str, column: str) -> tuple[pd.DataFrame,
                                                                                                      str]:
    """A search's accuracy rows (`frame`, without step 0: the search scored no task on the base model) with the
    base model's point put first when a uniform run of the base model scored the same task on the same number
    of documents (`base_accuracy`), and a line that says where it comes from ("" when none was found)."""
    ns = counts(frame, column).dropna()
    found = base_accuracy(model, column, int(ns.max()) if len(ns) and ns.nunique() == 1 else None)
    if found is None:
        return frame, ""
    zero = snapshots[snapshots["step"] == 0]
    params = _number(zero["params"].iloc[0]) if not zero.empty else found["params"]
    row = {"step": 0, "params": params, "budget": 1.0, column: found["value"], n_column(column): found["n"]}
    out = pd.concat([pd.DataFrame([row]), frame], ignore_index=True)
    for name in ("step", "params", "budget"):
        out[name] = pd.to_numeric(out[name], errors="coerce")
    return out, f"base run {found['run_id']} (n={found['n']})"
