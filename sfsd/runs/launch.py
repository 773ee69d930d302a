"""Background runs for the dashboard: start a detached `python -m sfsd ...` on a run, ask it to stop."""

from __future__ import annotations

import shlex
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from sfsd.errors import SfsdError
from sfsd.runs._files import disk_guard, timestamp
from sfsd.runs.readonly import require_writable
from sfsd.runs.run import Run


def launch(run: Run, argv: Sequence[str] | None = None, *, command: Sequence[str] | None = None) -> int:
    """Start `sys.executable -m sfsd <argv...>` (or the full `command`) detached from this process, its
    stdout and stderr appended to the run's log.txt, cwd and environment inherited; return its pid.

    The status becomes pending with that pid until the child calls `mark_running()`; if the child dies
    first, the run reads as failed. Refused while a process works on the run, and for a finished run
    (its result would read as pending again)."""
    if (argv is None) == (command is None):
        raise ValueError("give either argv (arguments of `sfsd`) or command (a full command line)")
    require_writable("start a run")
    cmd = [*command] if command is not None else [sys.executable, "-m", "sfsd", *argv]
    _refuse_if_active(run)
    run.clear_cancel()
    run.write_status(state="pending", pid=None, launched=timestamp(), command=cmd, finished=None, eta_s=None,
                     message="starting")
    with disk_guard(run.id), open(run.log_path, "ab") as log:
        log.write(f"--- {timestamp()} {shlex.join(cmd)}\n".encode())
        log.flush()
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, close_fds=True)
    run.write_status(pid=process.pid)
    # Reap the child when it exits, so that it does not linger as a zombie that looks alive.
    threading.Thread(target=process.wait, name=f"sfsd-run-{process.pid}", daemon=True).start()
    return process.pid


def cancel(run_id: str, root: Path | None = None) -> Run:
    """Ask the process working on a run to stop (it checks between trials and ends as cancelled)."""
    require_writable("cancel a run")
    run = Run.open(run_id, root)
    status = run.status()
    if not run.is_active():
        raise SfsdError(f"run {run_id} is not running (state {status['state']}): there is nothing to cancel")
    run.request_cancel()
    return run


def _refuse_if_active(run: Run) -> None:
    if run.status()["state"] == "done":
        raise SfsdError(f"run {run.id} is already finished: read it with `sfsd runs show {run.id}`, "
                        f"or delete it with `sfsd runs delete {run.id}` to compute it again")
    if run.is_active():
        pid = run.status().get("pid")
        raise SfsdError(f"run {run.id} is already running in process {pid}: "
                        f"wait for it or cancel it with `sfsd runs cancel {run.id}`")
