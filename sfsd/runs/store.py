"""All runs under one folder: the table of runs, opening and deleting them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from sfsd.errors import SfsdError
from sfsd.paths import runs_dir
from sfsd.runs._files import try_exclusive
from sfsd.runs.frames import _frame
from sfsd.runs.ids import is_run_id, metric_name, metric_tolerance
from sfsd.runs.run import LOCK, Run
from sfsd.runs.transfer import imported_origin, origin_line

RUN_COLUMNS = ["run_id", "kind", "model", "method", "metric", "tolerance", "strategy", "target_budget", "state",
               "layers_done", "layers_total",
               "progress", "eta_s", "created", "updated", "overall_budget", "message", "pid",
               "origin"]
_RUN_DTYPES = {"tolerance": "float64", "target_budget": "float64", "layers_done": "Int64", "layers_total": "Int64",
               "progress": "float64",
               "eta_s": "float64", "created": "time", "updated": "time", "overall_budget": "float64", "pid": "Int64"}


class RunStore:
    """The runs under `root` (default `sfsd.paths.runs_dir()`, which honours $SFSD_CACHE_DIR)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else runs_dir()

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def ids(self) -> list[str]:
        """Run folder names (hidden and temporary folders excluded), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and is_run_id(p.name))

    def run(self, run_id: str) -> Run:
        return Run.open(run_id, self.root)

    def list_runs(self) -> pd.DataFrame:
        """One row per run, newest first (RUN_COLUMNS). A folder that cannot be read shows state "invalid"
        with the reason in `message`; `overall_budget` is set only for done runs."""
        rows = [self._summary(run_id) for run_id in self.ids()]
        frame = _frame(rows, RUN_COLUMNS, _RUN_DTYPES)
        frame = frame.sort_values(["created", "run_id"], ascending=False, na_position="last", kind="stable")
        return frame.reset_index(drop=True)

    def _summary(self, run_id: str) -> dict:
        try:
            run = self.run(run_id)
            status = run.status()
            result = run.result() if status["state"] == "done" else None
        except SfsdError as exc:
            return {"run_id": run_id, "state": "invalid", "message": str(exc), "progress": 0.0}
        config = run.config
        done, total = status.get("layers_done"), status.get("layers_total")
        if status["state"] == "done":
            progress = 1.0
        else:
            progress = min(1.0, done / total) if isinstance(done, (int, float)) and total else 0.0
        return {
            "run_id": run_id, "kind": config.get("kind"), "model": config.get("model"),
            "method": config.get("method"), "metric": metric_name(config), "tolerance": metric_tolerance(config),
            "strategy": config.get("strategy"), "target_budget": config.get("target_budget"),
            "state": status["state"], "layers_done": done, "layers_total": total, "progress": progress,
            "eta_s": status.get("eta_s"), "created": config.get("created"),
            "updated": status.get("updated") or config.get("created"),
            "overall_budget": (result or {}).get("overall_budget"), "message": status.get("message"),
            "pid": status.get("pid"), "origin": origin_line(imported_origin(run)),
        }

    def delete(self, run_id: str) -> None:
        """Delete a run's folder (also one that cannot be opened); refused while a process works on it."""
        path = self.root / run_id
        if not is_run_id(run_id) or not path.is_dir():
            raise SfsdError(f"no run {run_id} in {self.root}: list the runs with `sfsd runs`")
        busy = SfsdError(f"run {run_id} is running: cancel it first with `sfsd runs cancel {run_id}`")
        if self._active(run_id):
            raise busy
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not try_exclusive(fd):
                raise busy
            trash = self.root / f".{run_id}.deleting"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        finally:
            os.close(fd)

    def _active(self, run_id: str) -> bool:
        try:
            return Run.open(run_id, self.root).is_active()
        except SfsdError:
            return False  # unreadable: its lock still guards against a live process
