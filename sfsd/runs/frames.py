"""A run's files as pandas DataFrames (what the dashboard plots). Each frame has its columns even when empty.

Time columns are timezone-aware (UTC) datetimes; ranks and parameter counts are nullable integers (Int64).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd

from sfsd.runs.run import Run

TRIAL_COLUMNS = ["layer", "block", "role", "d_in", "d_out", "beta", "rank", "value", "threshold", "passed",
                 "seconds", "time"]
DECISION_COLUMNS = ["index", "layer", "block", "role", "d_in", "d_out", "beta", "rank", "params_kept",
                    "params_full", "value", "time"]
LAYER_COLUMNS = ["order", "layer", "block", "role", "d_in", "d_out", "decided", "intact", "rank", "beta",
                 "params_kept", "params_full", "retained", "value", "decision_index"]
SNAPSHOT_COLUMNS = ["step", "params", "budget", "metric", "time"]
EVALUATION_COLUMNS = ["kind", "task", "split", "limit", "lm_eval_version", "time"]

_DTYPES = {
    "block": "Int64", "d_in": "Int64", "d_out": "Int64", "rank": "Int64", "index": "Int64", "order": "Int64",
    "params_kept": "Int64", "params_full": "Int64", "decision_index": "Int64", "step": "Int64", "params": "Int64",
    "limit": "Int64", "beta": "float64", "value": "float64", "threshold": "float64", "seconds": "float64",
    "retained": "float64", "budget": "float64", "metric": "float64", "passed": "boolean", "decided": "bool",
    "intact": "bool", "time": "time",
}


def trace_frame(run: Run, kind: str | None = "trial") -> pd.DataFrame:
    """Trace records of one kind ("trial" or "decision"), or all of them with a `kind` column (kind=None)."""
    records = run.read_trace()
    if kind is None:
        return _frame(records, ["kind", *dict.fromkeys(TRIAL_COLUMNS + DECISION_COLUMNS)])
    columns = TRIAL_COLUMNS if kind == "trial" else DECISION_COLUMNS
    rows = [{k: v for k, v in record.items() if k != "kind"} for record in records if record.get("kind") == kind]
    return _frame(rows, columns)


def layers_frame(run: Run) -> pd.DataFrame:
    """One row per searched layer, in search order: the config's `layers` list (undecided ones included,
    decided=False), then any decided layer missing from that list. `retained` = params_kept / params_full."""
    kept = (run.result() or {}).get("layers") if run.config.get("kind") == "uniform" else None
    if kept:  # a structurally pruned uniform run: every layer decided at once, by its kept share (no rank)
        rows = [_layer_row(order, spec, {**spec, "layer": spec["name"]}) for order, spec in enumerate(kept)]
        return _frame([{**row, "intact": row["params_kept"] == row["params_full"]} for row in rows], LAYER_COLUMNS)
    decisions = {record["layer"]: record for record in run.decisions() if "layer" in record}
    specs = [spec for spec in run.config.get("layers") or [] if isinstance(spec, dict) and "name" in spec]
    listed = {spec["name"] for spec in specs}
    specs += [{"name": name} for name in decisions if name not in listed]
    rows = [_layer_row(order, spec, decisions.get(spec["name"])) for order, spec in enumerate(specs)]
    return _frame(rows, LAYER_COLUMNS)


def _layer_row(order: int, spec: Mapping, decision: Mapping | None) -> dict:
    decision = decision or {}
    decided = bool(decision)
    row = {"order": order, "layer": spec["name"], "decided": decided, "value": decision.get("value"),
           "decision_index": decision.get("index")}
    for key in ("block", "role", "d_in", "d_out"):
        row[key] = spec.get(key, decision.get(key))
    rank = decision.get("rank")
    row.update(rank=rank, beta=decision.get("beta"), intact=decided and rank is None)
    full = decision.get("params_full", spec.get("params_full"))
    kept = decision.get("params_kept", full if row["intact"] else None)
    row.update(params_full=full, params_kept=kept, retained=kept / full if kept is not None and full else None)
    return row


def snapshots_frame(run: Run) -> pd.DataFrame:
    """One row per step (the last snapshot of a step wins); task results flattened as `<metric>:<task>`
    columns, e.g. `acc:piqa`, `acc_norm:piqa`, `n:piqa`."""
    rows = []
    for record in run.read_snapshots():
        row = {key: value for key, value in record.items() if key != "evals"}
        for task, metrics in (record.get("evals") or {}).items():
            for name, value in (metrics or {}).items():
                row[f"{name}:{task}"] = value
        rows.append(row)
    frame = _frame(rows, SNAPSHOT_COLUMNS)
    if frame.empty:
        return frame
    frame = frame.drop_duplicates("step", keep="last").sort_values("step", kind="stable")
    return frame.reset_index(drop=True)


def evaluations_frame(run: Run) -> pd.DataFrame:
    """One row per evaluation; each metric becomes a column (a clash with a base column gets `metrics.`)."""
    rows = []
    for record in run.read_evaluations():
        row = {key: value for key, value in record.items() if key != "metrics"}
        for name, value in (record.get("metrics") or {}).items():
            row[name if name not in row and name not in EVALUATION_COLUMNS else f"metrics.{name}"] = value
        rows.append(row)
    return _frame(rows, EVALUATION_COLUMNS)


# The cells beside a perplexity column `ppl@<n>`, as `<part>:ppl@<n>`, and the metric each is read from.
PPL_PARTS = {"low": "ppl_low", "high": "ppl_high", "tokens": "n_tokens"}


def ppl_cells(metrics: Mapping) -> dict:
    """A perplexity evaluation as the cells of a table row: `ppl@<seq_len>` (`ppl` without a length) and beside
    it (PPL_PARTS) `low:` and `high:`, its 95% bootstrap interval over windows (None in a run recorded before
    intervals were kept), and `tokens:`, the tokens scored; e.g. `low:ppl@128`. Missing or NaN values are None."""
    def number(name: str) -> float | None:
        value = metrics.get(name)
        return None if value is None or pd.isna(value) else value

    seq_len = number("seq_len")
    column = "ppl" if seq_len is None else f"ppl@{int(seq_len)}"
    return {column: number("ppl")} | {f"{part}:{column}": number(name) for part, name in PPL_PARTS.items()}


def spectra_frame(run: Run, layer: str | None = None, kind: str | None = None) -> pd.DataFrame:
    """Long table layer, block, role, kind ("feature" | "weight"), index, value; optionally one layer / kind."""
    return run.read_spectra(layer, kind)


def _frame(rows: Iterable[Mapping], columns: list[str], dtypes: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Rows as a frame with `columns` first (extra keys after them), typed by `dtypes` (default _DTYPES)."""
    dtypes = _DTYPES if dtypes is None else dtypes
    rows = list(rows)
    frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    extra = [column for column in frame.columns if column not in columns]
    frame = frame.reindex(columns=[*columns, *extra])
    for column in frame.columns:
        if column in dtypes:
            frame[column] = _typed(frame[column], dtypes[column])
    return frame


def _typed(series: pd.Series, dtype: str) -> pd.Series:
    if dtype == "time":
        return to_times(series)
    if dtype in ("bool", "boolean"):
        return series.astype("boolean").fillna(False).astype(bool) if dtype == "bool" else series.astype("boolean")
    numbers = pd.to_numeric(series, errors="coerce")
    if dtype == "Int64":
        try:
            return numbers.astype("Int64")
        except (TypeError, ValueError):  # fractional values: keep them as floats
            return numbers.astype("float64")
    return numbers.astype(dtype)


def to_times(series: pd.Series) -> pd.Series:
    """ISO 8601 strings (or epoch seconds) as UTC datetimes; unreadable values as NaT."""
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return pd.to_datetime(series, unit="s", utc=True, errors="coerce")
    return pd.to_datetime(series, utc=True, errors="coerce", format="ISO8601")
