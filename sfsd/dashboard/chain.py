"""Run several `sfsd` command lines one after the other (the dashboard's "run all missing" button).

Usage: python -m sfsd.dashboard.chain '<json list of argv lists>'. Each command runs to its end before the
next starts, so that a laptop is not asked to hold five models at once; a failing one does not stop the rest.
"""

from __future__ import annotations

import json
import subprocess
import sys


def main(argv: list[str]) -> int:
    commands = json.loads(argv[0]) if argv else []
    worst = 0
    for command in commands:
        print(f"--- sfsd {' '.join(command)}", flush=True)
        worst = max(worst, subprocess.call([sys.executable, "-m", "sfsd", *command]))
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
