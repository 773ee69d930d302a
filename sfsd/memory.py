"""Peak memory of a command, measured in a child process (what `bench.scale` and the tests report)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

_CHILD = """
import json, resource, sys, time
import torch
from sfsd.cli import main
start = time.perf_counter()
code = main(sys.argv[1:])
peak = {"code": code, "seconds": time.perf_counter() - start,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
if torch.cuda.is_available():
    peak["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
print("SFSD-PEAK " + json.dumps(peak))
"""


def measure_command(argv: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    """Run `sfsd <argv>` in a fresh Python; its exit code, seconds, peak RSS (and CUDA peak) and output.

    A fresh process, so the peak resident set belongs to this command alone (ru_maxrss of the child).
    """
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("SFSD-PEAK ")]
    result = json.loads(lines[-1].removeprefix("SFSD-PEAK ")) if lines else {"code": done.returncode}
    result.update(wall_seconds=time.perf_counter() - started, stdout=done.stdout, stderr=done.stderr)
    return result
