"""Run several `sfsd` command lines one after the other (the dashboard's "run all missing" button, the quick
demo).

Usage: python -m sfsd.cli.chain '<json list of {"argv": [...], "label": "...", "log": "..."}>' [RECORD.json].
Each command (the arguments of `sfsd`) runs to its end before the next starts, so that a laptop is not asked to
hold five models at once; a failing one does not stop the rest. A command with a "log" (its run's log file)
writes its output there, so each run's log holds its own output only. With RECORD, the chain's measured
wall-clock time is written there (atomically) when it starts, after each command and when it ends: what ran,
each command's seconds and exit code, started and finished.

On Linux each command is a child forked from this process, which imported `sfsd.cli` once (the package this
module lives in), instead of a new `python -m sfsd`: the same separate process per run (its own pid, memory
given back at its end, a crash or a SIGTERM ends that run only), without importing torch and transformers again
for every run (about 5 s each).
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import time
import traceback

from sfsd.atomic import write_json
from sfsd.runs import timestamp

FORK = sys.platform.startswith("linux")  # os.fork with the imports inherited (see the module docstring)


def main(argv: list[str]) -> int:
    commands = json.loads(argv[0]) if argv else []
    record_path = argv[1] if len(argv) > 1 else None
    record = {"started": timestamp(), "finished": None,
              "commands": [{"argv": c["argv"], "label": c.get("label"), "seconds": None, "exit": None}
                           for c in commands]}
    logs = [c.get("log") for c in commands]
    if record_path:
        write_json(record_path, record)
    worst = 0
    for entry, log in zip(record["commands"], logs, strict=True):
        start = time.monotonic()
        code = run_logged(entry["argv"], log)
        entry.update(seconds=round(time.monotonic() - start, 1), exit=code)
        worst = max(worst, code)
        if record_path:
            write_json(record_path, record)
    record["finished"] = timestamp()
    if record_path:
        write_json(record_path, record)
    return worst


def run_logged(argv: list[str], log: str | None) -> int:
    """`sfsd <argv>` to its end in a process of its own, its output appended to `log` (else to this process's
    output); its exit code (-N when signal N ended it)."""
    header = f"--- {timestamp()} sfsd {' '.join(argv)}\n"
    if log is None:
        print(header, end="", flush=True)
    else:
        with open(log, "a", encoding="utf-8") as out:
            out.write(header)
    if FORK:
        return run_forked(argv, log)
    if log is None:
        return subprocess.call([sys.executable, "-m", "sfsd", *argv])
    with open(log, "a", encoding="utf-8") as out:
        return subprocess.call([sys.executable, "-m", "sfsd", *argv], stdout=out, stderr=subprocess.STDOUT)


def run_forked(argv: list[str], log: str | None) -> int:
    """`sfsd <argv>` in a child forked from this process; its exit code."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(argv, log)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _child(argv: list[str], log: str | None) -> None:
    """What `python -m sfsd <argv>` does, in the forked child; never returns."""
    code = 1
    try:
        if log is not None:
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        from sfsd.cli import main

        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
