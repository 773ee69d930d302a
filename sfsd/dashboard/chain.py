"""Run several `sfsd` command lines one after the other (the dashboard's "run all missing" button, the quick
demo).

Usage: python -m sfsd.dashboard.chain '<json list of {"argv": [...], "label": "...", "log": "..."}>' [RECORD.json].
Each command (the arguments of `sfsd`) runs to its end before the next starts, so that a laptop is not asked to
hold five models at once; a failing one does not stop the rest. A command with a "log" (its run's log file)
writes its output there, so each run's log holds its own output only. With RECORD, the chain's measured
wall-clock time is written there (atomically) when it starts, after each command and when it ends: what ran,
each command's seconds and exit code, started and finished.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from sfsd.atomic import write_json
from sfsd.runs import timestamp


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
    """`python -m sfsd <argv>` to its end, its output appended to `log` (else to this process's output)."""
    header = f"--- {timestamp()} sfsd {' '.join(argv)}\n"
    if log is None:
        print(header, end="", flush=True)
        return subprocess.call([sys.executable, "-m", "sfsd", *argv])
    with open(log, "a", encoding="utf-8") as out:
        out.write(header)
        out.flush()
        return subprocess.call([sys.executable, "-m", "sfsd", *argv], stdout=out, stderr=subprocess.STDOUT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
