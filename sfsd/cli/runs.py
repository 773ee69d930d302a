"""`sfsd runs`: list, show, cancel, delete, export and import the runs of the run store."""

from __future__ import annotations

import argparse
import json
import math

import pandas as pd

from sfsd import options
from sfsd.options import add_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("runs", help="list, show, cancel, delete, export or import runs",
                              description="The runs under <cache>/runs (newest first when listed).")
    p.set_defaults(func=run_list)
    sub = p.add_subparsers(dest="runs_command")
    sub.add_parser("list", help="table of runs, newest first").set_defaults(func=run_list)
    show = sub.add_parser("show", help="config, status and per-layer table of one run")
    show.add_argument("run_id")
    add_flags(show, options.SHOW_LAYERS)
    show.set_defaults(func=run_show)
    resume = sub.add_parser("resume", help="continue (or start) a stored search or uniform run from its own config",
                            description="What the dashboard starts in the background: the run's config decides "
                                        "everything; a finished run is left as it is.")
    resume.add_argument("run_id")
    add_flags(resume, options.STOP_AT_BUDGET, options.QUIET, *options.PLACEMENT)
    resume.set_defaults(func=run_resume)
    cancel = sub.add_parser("cancel", help="ask a running run to stop after its current trial")
    cancel.add_argument("run_id")
    cancel.set_defaults(func=run_cancel)
    delete = sub.add_parser("delete", help="delete a run's folder (refused while it runs)")
    delete.add_argument("run_id")
    delete.set_defaults(func=run_delete)
    export = sub.add_parser("export", help="write runs into one zip archive (to import on another machine)",
                            description="Each run's folder and its evaluation-cache entries, with a manifest of "
                                        "versions, host, date and the sha256 of every file.")
    export.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    add_flags(export, options.OUT_ARCHIVE, options.WITH_MODEL)
    export.set_defaults(func=run_export)
    imp = sub.add_parser("import", help="add the runs of an archive of `sfsd runs export` to this cache",
                         description="Checks the whole archive (manifest, checksums, file types, paths, sizes) "
                                     "before writing anything.")
    imp.add_argument("archive")
    imp.set_defaults(func=run_import)


def run_resume(args: argparse.Namespace) -> int:
    from sfsd.cli.common import placement_from_args
    from sfsd.search.resume import resume_run

    run = resume_run(args.run_id, device=placement_from_args(args), progress=not args.quiet,
                     stop_at_budget=args.stop_at_budget)
    state = run.status()["state"]
    print(f"run {run.id}: {state}")
    return 0 if state in ("done", "stopped") else 1


def run_list(args: argparse.Namespace) -> int:
    from sfsd.runs import RunStore

    store = RunStore()
    runs = store.list_runs()
    if runs.empty:
        print(f"no runs in {store.root}")
        return 0
    table = pd.DataFrame({
        "run": runs["run_id"],
        "state": runs["state"],
        "progress": [_progress(row) for row in runs.itertuples()],
        "eta": [_duration(eta) if state in ("running", "pending") else "-"
                for eta, state in zip(runs["eta_s"], runs["state"], strict=True)],
        "budget": runs["overall_budget"].map(lambda v: "-" if pd.isna(v) else f"{v:.4f}"),
        "updated": runs["updated"].map(_when),
    })
    _print_table(table)
    return 0


def run_show(args: argparse.Namespace) -> int:
    from sfsd.runs import RunStore, layers_frame
    from sfsd.runs.transfer import imported_origin, origin_line

    run = RunStore().run(args.run_id)
    status = run.status()
    rows = [("run", run.id), ("path", str(run.path)), ("state", _state_line(status))]
    if status.get("message"):
        rows.append(("message", status["message"]))
    for key in ("pid", "started", "updated", "finished", "base_metric", "base_params"):
        if status.get(key) is not None:
            rows.append((key, metric_text(run.config, status[key]) if key == "base_metric" else str(status[key])))
    result = run.result() if status["state"] == "done" else None
    for key in ("target_budget", "overall_budget", "params", "final_metric"):
        if result and result.get(key) is not None:
            rows.append((key, metric_text(run.config, result[key]) if key == "final_metric" else str(result[key])))
    if run.log_path.exists():
        rows.append(("log", str(run.log_path)))
    origin = origin_line(imported_origin(run))
    if origin:
        rows.append(("origin", origin))
    _print_pairs(rows)
    print("\nconfig:")
    config = {key: value for key, value in run.config.items() if key != "layers"}
    _print_pairs([(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
                  for key, value in config.items()], indent="  ")
    _print_layers(layers_frame(run), args.rows)
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    from sfsd.runs import cancel

    run = cancel(args.run_id)
    pid = run.status().get("pid")
    print(f"asked run {run.id} (process {pid}) to stop: it ends as cancelled after its current trial")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    from sfsd.runs import RunStore

    RunStore().delete(args.run_id)
    print(f"deleted run {args.run_id}")
    return 0


def metric_text(config: dict, value: float) -> str:
    """A search metric's value; an accuracy (`task` metric) with its 95% Wilson interval and the number of
    search-split documents it was measured on."""
    metric = config.get("metric") if isinstance(config.get("metric"), dict) else {}
    if metric.get("name") != "task" or not isinstance(value, (int, float)):
        return f"{value:.4f}" if isinstance(value, float) else str(value)
    from sfsd.data import load_task
    from sfsd.errors import SfsdError
    from sfsd.evaluate.intervals import format_proportion

    try:
        n = len(load_task(metric["task"], "search")[: metric.get("limit") or None])
    except (SfsdError, OSError, KeyError, ValueError):
        return f"{value} (accuracy; number of documents unknown)"
    return f"{format_proportion(float(value), n, digits=4)}, search split"


def run_export(args: argparse.Namespace) -> int:
    from sfsd.runs.transfer import export_archive

    manifest = export_archive(args.run_ids, args.out, with_model=args.with_model)
    size = sum(member["bytes"] for member in manifest["members"])
    models = sorted({member["path"].split("/")[1] for member in manifest["members"]
                     if member["path"].startswith("models/")})
    print(f"exported {len(manifest['runs'])} run(s), {len(manifest['members'])} files ({size / 1e6:.1f} MB "
          f"unpacked) to {args.out}" + (f"; saved models of {', '.join(models)}" if models else ""))
    return 0


def run_import(args: argparse.Namespace) -> int:
    from sfsd.runs.transfer import import_archive

    for line in import_archive(args.archive).lines():
        print(line)
    return 0


def _print_layers(layers: pd.DataFrame, limit: int) -> None:
    if layers.empty:
        print("\nlayers: none decided yet")
        return
    decided = int(layers["decided"].sum())
    shown = layers if limit <= 0 else layers.head(limit)
    print(f"\nlayers ({decided} of {len(layers)} decided; showing {len(shown)}):")
    table = shown[["layer", "d_in", "d_out", "rank", "beta", "retained", "decided"]].astype(object)
    table = table.where(table.notna(), "-")
    for column in ("beta", "retained"):
        table[column] = table[column].map(lambda v: v if v == "-" else f"{v:.3f}")
    _print_table(table)


def _print_table(table: pd.DataFrame) -> None:
    """Left-aligned columns, two spaces apart."""
    cells = [[str(column) for column in table.columns]] + [[str(value) for value in row] for row in table.values]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.columns))]
    for row in cells:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())


def _print_pairs(rows: list[tuple[str, str]], indent: str = "") -> None:
    width = max((len(key) for key, _ in rows), default=0)
    for key, value in rows:
        print(f"{indent}{key:<{width}}  {value}")


def _state_line(status: dict) -> str:
    parts = []
    if status.get("layers_total"):
        parts.append(f"{status.get('layers_done') or 0} of {status['layers_total']} layers")
    if status.get("trials_done"):
        parts.append(f"{status['trials_done']} trials")
    if status["state"] in ("running", "pending") and status.get("eta_s") is not None:
        parts.append(f"eta {_duration(status['eta_s'])}")
    return status["state"] + (f" ({', '.join(parts)})" if parts else "")


def _progress(row) -> str:
    if pd.isna(row.layers_total):
        return "-"
    done = 0 if pd.isna(row.layers_done) else int(row.layers_done)
    return f"{done}/{int(row.layers_total)} ({100 * row.progress:.0f}%)"


def _duration(seconds) -> str:
    if seconds is None or pd.isna(seconds) or not math.isfinite(seconds):
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _when(value) -> str:
    return "-" if pd.isna(value) else value.tz_convert(None).strftime("%Y-%m-%d %H:%M") + " UTC"
