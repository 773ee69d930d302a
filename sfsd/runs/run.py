"""One run folder: its config, status, trace, snapshots, spectra, result and evaluations.

The search writes through `Run`; the dashboard reads through `Run.status()` and the frames of
`sfsd.runs.frames`. Stored states are pending, running, done, failed and cancelled; `status()`
reports what is true now: a running (or done) run whose process is gone reads as `interrupted`.

Folder layout (format 1), `<runs_dir>/<run_id>/`:
    config.json        written once, atomically: format_version, kind, model, method, free-form search
                       fields (metric {name, tolerance, ...}, ..., layers [{name, block, role, d_in, d_out}])
    status.json        rewritten atomically: STATUS_DEFAULTS plus anything the writer adds
    trace.jsonl        appended durably: {"kind": "trial", ...} and {"kind": "decision", ...} records
    snapshots.jsonl    appended durably: {"step", "params", "budget", "metric", "evals": {task: {...}}}
    spectra.parquet    long table SPECTRA_COLUMNS, replaced atomically
    result.json        written once the search is done
    evaluations.jsonl  appended durably: {"kind": "task"|"ppl"|"bias", "task", "split", "limit", "metrics", ...}
    lock               flock target of the process working on the run (holds its pid)
    cancel             present while a cancel is requested
    log.txt            stdout and stderr of a launched run
    imported.json      only in an imported run: where and when it was computed (sfsd.runs.transfer)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sfsd.atomic import atomic_dir, write_json, write_text
from sfsd.cache import versions
from sfsd.errors import SfsdError
from sfsd.paths import runs_dir
from sfsd.runs._files import (
    append_record,
    disk_guard,
    folder_mutex,
    lock_held,
    lock_pid,
    pid_alive,
    plain,
    read_records,
    timestamp,
    try_exclusive,
)
from sfsd.runs.ids import FORMAT_VERSION, KINDS, identity, is_run_id, run_id_for

if TYPE_CHECKING:
    import pandas as pd

STORED_STATES = ("pending", "running", "done", "failed", "cancelled")
TRACE_KINDS = ("trial", "decision")
EVALUATION_KINDS = ("task", "ppl", "bias")
SPECTRA_COLUMNS = ["layer", "block", "role", "kind", "index", "value"]
STATUS_DEFAULTS: dict[str, Any] = {
    "state": "pending", "pid": None, "started": None, "updated": None, "finished": None, "layers_total": None,
    "layers_done": 0, "trials_done": 0, "eta_s": None, "message": "", "base_metric": None, "base_params": None,
}

CONFIG, STATUS, TRACE, SNAPSHOTS = "config.json", "status.json", "trace.jsonl", "snapshots.jsonl"
SPECTRA, RESULT, EVALUATIONS = "spectra.parquet", "result.json", "evaluations.jsonl"
LOCK, CANCEL, LOG = "lock", "cancel", "log.txt"
IMPORTED = "imported.json"  # where and when an imported run was computed (sfsd.runs.transfer)


class Run:
    """A run folder `<root>/<run_id>/`. Build one with `Run.create(config)` or `Run.open(run_id)`."""

    def __init__(self, path: Path, config: dict):
        self._path = Path(path)
        self._config = config
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"Run({self.id!r})"

    # ---- creation -------------------------------------------------------------------------------------

    @classmethod
    def create(cls, config: dict, root: Path | None = None) -> Run:
        """The run of `config`: created (folder, config.json, status.json) if new, else the existing one.

        Raises SfsdError if a folder of that id holds another format version or a different config. An
        existing config without `layers` gets the given ones (the only change ever made to config.json)."""
        config = _complete(_check_config(config))
        run_id = run_id_for(config)
        path = Path(root) if root is not None else runs_dir()
        path = path / run_id
        if not path.exists():
            try:
                with disk_guard(run_id), atomic_dir(path) as tmp:
                    write_json(tmp / CONFIG, config)
                    write_json(tmp / STATUS, {**STATUS_DEFAULTS, "updated": config["created"]})
                return cls(path, config)
            except FileExistsError:
                pass  # created meanwhile by another process: check it like any existing run
        run = cls(path, _load_config(path, run_id))
        _check_same(run, config)
        run._add_layers(config.get("layers"))
        return run

    def _add_layers(self, layers: list | None) -> None:
        """Record the layer list in a config stored without one (created before the search knew it)."""
        if layers and not self._config.get("layers"):
            self._config = {**self._config, "layers": layers}
            with disk_guard(self.id):
                write_json(self._path / CONFIG, self._config)

    @classmethod
    def open(cls, run_id: str, root: Path | None = None) -> Run:
        """An existing run; SfsdError if there is none of that id or it cannot be read."""
        root = Path(root) if root is not None else runs_dir()
        if not is_run_id(run_id) or not (root / run_id).is_dir():
            raise SfsdError(f"no run {run_id} in {root}: list the runs with `sfsd runs`")
        return cls(root / run_id, _load_config(root / run_id, run_id))

    # ---- identity -------------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._path.name

    @property
    def path(self) -> Path:
        return self._path

    @property
    def config(self) -> dict:
        """The stored config (do not modify it)."""
        return self._config

    @property
    def log_path(self) -> Path:
        return self._path / LOG

    def file(self, name: str) -> Path:
        """Path of one of the run's files (config.json, trace.jsonl, ...)."""
        return self._path / name

    # ---- status ---------------------------------------------------------------------------------------

    def stored_status(self) -> dict:
        """status.json as written, over the defaults."""
        try:
            stored = json.loads((self._path / STATUS).read_text())
        except FileNotFoundError:
            stored = {}
        except json.JSONDecodeError as exc:
            raise SfsdError(f"status.json of run {self.id} is corrupt: delete the run with "
                            f"`sfsd runs delete {self.id}`") from exc
        return {**STATUS_DEFAULTS, **stored}

    def status(self) -> dict:
        """The status as it is now: `state` is pending, running, done, failed, cancelled, stopped (an
        Algorithm 1 walk that reached its `stopped_at_budget`) or interrupted (stopped without finishing);
        all but done resume with the same command. The written state is kept as `stored_state`.

        A run reads as running only while a process holds its lock; pending (launched) while the
        launched process lives; done only once result.json exists."""
        status = self.stored_status()
        stored = status["stored_state"] = status["state"]
        pid = status.get("pid")
        if stored == "running" and not lock_held(self._path / LOCK):
            status.update(state="interrupted", eta_s=None,
                          message=f"stopped before finishing (process {pid}): resume with the same command")
        elif stored == "pending" and pid and not (self._local_pid_alive(pid) or lock_held(self._path / LOCK)):
            status.update(state="failed", eta_s=None,
                          message=f"process {pid} exited before starting: see {self.log_path}")
        elif stored == "cancelled" and status.get("stopped_at_budget") is not None:
            status["state"] = "stopped"
        elif stored == "done" and not (self._path / RESULT).exists():
            status.update(state="interrupted", message="finished without a result: resume with the same command")
        return status

    def _local_pid_alive(self, pid: int) -> bool:
        """Whether `pid` is a live process of this machine (an imported run's pids are another machine's)."""
        return not (self._path / IMPORTED).exists() and pid_alive(pid)

    def is_active(self) -> bool:
        """Whether a process is working on this run (running, or launched and starting)."""
        status = self.status()
        return status["state"] == "running" or (status["state"] == "pending" and bool(status.get("pid")))

    def write_status(self, **fields: Any) -> dict:
        """Merge `fields` into status.json (atomically; `updated` is set); return the stored status."""
        state = fields.get("state")
        if state is not None and state not in STORED_STATES:
            raise ValueError(f"state must be one of {STORED_STATES}, not {state!r}")
        if state == "done" and not (self._path / RESULT).exists():
            raise ValueError("write the result (write_result) before setting state 'done'")
        with disk_guard(self.id), folder_mutex(self._path):
            status = {**self.stored_status(), **plain(fields), "updated": timestamp()}
            write_json(self._path / STATUS, status)
        return status

    # ---- lock and life cycle --------------------------------------------------------------------------

    @contextmanager
    def lock(self) -> Iterator[Run]:
        """Hold the run's exclusive lock (flock on `lock`) for the block; SfsdError if another process has it.

        If the block raises an Exception while the status says running, the status becomes failed with
        the exception as message (Ctrl-C leaves it running, which then reads as interrupted)."""
        if self._lock_fd is not None:
            raise RuntimeError(f"this Run object already holds the lock of {self.id}")
        path = self._path / LOCK
        with disk_guard(self.id):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not try_exclusive(fd):
                holder = lock_pid(path)
                who = f"process {holder}" if holder else "another process"
                raise SfsdError(f"run {self.id} is already running in {who}: "
                                f"wait for it or cancel it with `sfsd runs cancel {self.id}`")
            with disk_guard(self.id):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._lock_fd = fd
            try:
                yield self
            except Exception as exc:
                self._record_failure(exc)
                raise
            finally:
                self._lock_fd = None
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def _record_failure(self, exc: Exception) -> None:
        try:
            stored = self.stored_status()
            if stored["state"] == "running" and stored.get("pid") == os.getpid():
                message = (str(exc).strip().splitlines() or [""])[0]
                self.mark_failed(message if isinstance(exc, SfsdError) else f"{type(exc).__name__}: {message}")
        except Exception:  # never hide the original error
            pass

    @property
    def locked(self) -> bool:
        """Whether this object holds the run's lock."""
        return self._lock_fd is not None

    def mark_running(self, **fields: Any) -> dict:
        """Set state running with this pid (call inside `lock()`); clears a stale cancel request."""
        if not self.locked:
            raise RuntimeError("mark_running needs the run's lock: call it inside `with run.lock():`")
        before = self.stored_status()
        if not (before["state"] == "pending" and before.get("pid") == os.getpid()):
            self.clear_cancel()  # a request left by an earlier process; a launch-time one is kept
        return self.write_status(state="running", pid=os.getpid(), started=timestamp(), finished=None,
                                 message="", stopped_at_budget=None, **fields)

    def mark_done(self, result: dict, **fields: Any) -> dict:
        """Write result.json, then state done."""
        self.write_result(result)
        self.clear_cancel()
        return self.write_status(state="done", finished=timestamp(), eta_s=0, message="", **fields)

    def mark_failed(self, message: str, **fields: Any) -> dict:
        return self.write_status(state="failed", finished=timestamp(), eta_s=None, message=message, **fields)

    def mark_cancelled(self, **fields: Any) -> dict:
        """State cancelled (resumable with the same command); consumes the cancel request."""
        self.clear_cancel()
        fields.setdefault("message", "cancelled on request: resume with the same command")
        return self.write_status(state="cancelled", finished=timestamp(), eta_s=None, **fields)

    def request_cancel(self) -> None:
        with disk_guard(self.id):
            write_text(self._path / CANCEL, timestamp() + "\n")

    def cancel_requested(self) -> bool:
        return (self._path / CANCEL).exists()

    def clear_cancel(self) -> None:
        (self._path / CANCEL).unlink(missing_ok=True)

    # ---- trace, snapshots, evaluations -----------------------------------------------------------------

    def append_trace(self, record: dict) -> None:
        """Append a trial or decision record durably (`time` is added when missing)."""
        if record.get("kind") not in TRACE_KINDS:
            raise ValueError(f"a trace record needs kind in {TRACE_KINDS}, got {record.get('kind')!r}")
        self._append(TRACE, record)

    def read_trace(self) -> list[dict]:
        return read_records(self._path / TRACE, self.id)

    def decisions(self) -> list[dict]:
        """The decision records, in the order they were made."""
        return [record for record in self.read_trace() if record.get("kind") == "decision"]

    def trials(self) -> list[dict]:
        return [record for record in self.read_trace() if record.get("kind") == "trial"]

    def append_snapshot(self, record: dict) -> None:
        if "step" not in record:
            raise ValueError("a snapshot record needs a step (number of decided layers)")
        self._append(SNAPSHOTS, record)

    def read_snapshots(self) -> list[dict]:
        return read_records(self._path / SNAPSHOTS, self.id)

    def append_evaluation(self, record: dict) -> None:
        if record.get("kind") not in EVALUATION_KINDS or not isinstance(record.get("metrics"), dict):
            raise ValueError(f"an evaluation record needs kind in {EVALUATION_KINDS} and a metrics dict")
        self._append(EVALUATIONS, record)

    def read_evaluations(self) -> list[dict]:
        return read_records(self._path / EVALUATIONS, self.id)

    def _append(self, name: str, record: dict) -> None:
        record = record if "time" in record else {**record, "time": timestamp()}
        with disk_guard(self.id):
            append_record(self._path / name, record)

    # ---- result and spectra -----------------------------------------------------------------------------

    def write_result(self, result: dict) -> None:
        with disk_guard(self.id):
            write_json(self._path / RESULT, plain(result))

    def result(self) -> dict | None:
        """result.json, or None before the run is done."""
        try:
            return json.loads((self._path / RESULT).read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as exc:
            raise SfsdError(f"result.json of run {self.id} is corrupt: resume the run with the same command") from exc

    def write_spectra(self, frame: pd.DataFrame, replace_layers: bool = False) -> None:
        """Write spectra.parquet (columns SPECTRA_COLUMNS). With `replace_layers`, keep the stored rows of
        other layers and replace those of the layers in `frame` (for writing layer by layer)."""
        import pandas as pd

        missing = [column for column in SPECTRA_COLUMNS if column not in frame.columns]
        if missing:
            raise ValueError(f"spectra frame lacks columns {missing}")
        frame = frame[SPECTRA_COLUMNS]
        if replace_layers:
            old = self.read_spectra()
            frame = pd.concat([old[~old["layer"].isin(frame["layer"].unique())], frame], ignore_index=True)
        frame = frame.astype({"layer": str, "block": "int64", "role": str, "kind": str, "index": "int64",
                              "value": "float64"})
        path = self._path / SPECTRA
        tmp = path.with_name(f".{SPECTRA}.{os.getpid()}.tmp")
        try:
            with disk_guard(self.id):
                frame.to_parquet(tmp, index=False)
                with open(tmp, "rb") as handle:
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def read_spectra(self, layer: str | None = None, kind: str | None = None) -> pd.DataFrame:
        """The stored spectra (optionally of one layer / kind); empty with SPECTRA_COLUMNS if none."""
        import pandas as pd

        path = self._path / SPECTRA
        if not path.exists():
            return pd.DataFrame({column: pd.Series(dtype=dtype) for column, dtype in _SPECTRA_DTYPES.items()})
        filters = [(name, "==", value) for name, value in (("layer", layer), ("kind", kind)) if value is not None]
        return pd.read_parquet(path, filters=filters or None).reset_index(drop=True)


_SPECTRA_DTYPES = {"layer": str, "block": "int64", "role": str, "kind": str, "index": "int64", "value": "float64"}


def decided_ranks(decisions: list[dict]) -> dict[str, int]:
    """The rank of every factorised layer among decision records (an intact layer's rank is None)."""
    return {d["layer"]: d["rank"] for d in decisions if d.get("rank") is not None}


def _check_config(config: dict) -> dict:
    if not isinstance(config, dict):
        raise SfsdError("a run config must be a dict")
    if config.get("kind") not in KINDS:
        raise SfsdError(f"a run config needs kind in {KINDS}, got {config.get('kind')!r}")
    for key in ("model", "method"):
        if not isinstance(config.get(key), str) or not config[key]:
            raise SfsdError(f"a run config needs a non-empty string {key!r}")
    return config


def _complete(config: dict) -> dict:
    """The config as stored: plain JSON, format version, creation time and library versions."""
    config = plain(config)
    config["format_version"] = FORMAT_VERSION
    config.setdefault("created", timestamp())
    config.setdefault("versions", versions())
    return config


def _load_config(path: Path, run_id: str) -> dict:
    """config.json of a run folder, checked for its format version."""
    delete = f"delete it with `sfsd runs delete {run_id}`"
    try:
        config = json.loads((path / CONFIG).read_text())
    except FileNotFoundError as exc:
        raise SfsdError(f"run {run_id} has no config.json (an interrupted creation?): {delete}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SfsdError(f"config.json of run {run_id} is corrupt: {delete}") from exc
    if not isinstance(config, dict):
        raise SfsdError(f"config.json of run {run_id} is not a JSON object: {delete}")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        age = "a newer" if isinstance(version, int) and version > FORMAT_VERSION else "an older"
        raise SfsdError(f"run {run_id} was written by {age} incompatible sfsd (format {version}): {delete}")
    return config


def _check_same(run: Run, config: dict) -> None:
    stored, wanted = identity(run.config), identity(config)
    if stored != wanted:
        key = next(key for key in sorted(set(stored) | set(wanted)) if stored.get(key) != wanted.get(key))
        raise SfsdError(f"run {run.id} exists with a different config ({key!r}: {stored.get(key)!r} there, "
                        f"{wanted.get(key)!r} here): delete it with `sfsd runs delete {run.id}`")
