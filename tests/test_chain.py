"""The dashboard's chain (`python -m sfsd.cli.chain`, the quick demo and "run all missing"): each command
runs to its end in a process of its own (forked from the chain on Linux), its output in its own log, its exit
code and seconds in the record; a failing command does not stop the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_each_command_runs_to_its_end_with_its_own_log_and_exit_code(tmp_path, cache):
    logs = [tmp_path / f"{n}.log" for n in range(3)]
    steps = [{"argv": ["runs"], "label": "list", "log": str(logs[0])},
             {"argv": ["runs", "show", "no-such-run"], "label": "refused", "log": str(logs[1])},
             {"argv": ["no-such-command"], "label": "not a command", "log": str(logs[2])},  # argparse exits 2
             {"argv": ["runs"], "label": "list again", "log": str(logs[0])}]
    record = tmp_path / "record.json"
    done = subprocess.run([sys.executable, "-m", "sfsd.cli.chain", json.dumps(steps), str(record)], cwd=ROOT,
                          env={**os.environ, "SFSD_CACHE_DIR": str(cache)}, capture_output=True, text=True,
                          timeout=120)
    result = json.loads(record.read_text())
    assert [c["exit"] for c in result["commands"]] == [0, 2, 2, 0], (result, done.stderr)
    assert [c["label"] for c in result["commands"]] == [s["label"] for s in steps]
    assert done.returncode == 2 and result["finished"] and not done.stdout
    assert all(c["seconds"] is not None and c["seconds"] >= 0 for c in result["commands"])
    listed = logs[0].read_text()
    assert listed.count("--- ") == 2 and listed.count("no runs in") == 2 and "error" not in listed
    refused = logs[1].read_text()
    assert refused.count("--- ") == 1 and "sfsd: error: no run no-such-run" in refused and "no runs" not in refused
    assert "invalid choice: 'no-such-command'" in logs[2].read_text()
