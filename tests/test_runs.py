"""The run store: ids, folder contract, crash repair, locks across processes, frames, launch, CLI."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import sfsd.runs
from sfsd.cli import main
from sfsd.errors import SfsdError
from sfsd.runs import (
    FORMAT_VERSION,
    LAYER_COLUMNS,
    RUN_COLUMNS,
    SNAPSHOT_COLUMNS,
    SPECTRA_COLUMNS,
    Run,
    RunStore,
    cancel,
    evaluations_frame,
    launch,
    layers_frame,
    run_id_for,
    snapshots_frame,
    spectra_frame,
    trace_frame,
)

LAYERS = [{"name": f"model.layers.{block}.mlp.{role}", "block": block, "role": role, "d_in": 64, "d_out": 96}
          for block in (1, 0) for role in ("up_proj", "down_proj")]
CONFIG = {"kind": "search", "model": "smollm2-135m", "method": "feature", "strategy": "greedy", "first_block": 0,
          "roles": ["up_proj", "down_proj"], "metric": {"name": "ppl", "tolerance": 0.02},
          "calibration": {"source": "mix", "samples": 8}, "seed": 0, "layers": LAYERS}

# Children import sfsd.runs without sfsd/__init__ (which loads torch and transformers: seconds each time).
PRELUDE = f"""
import sys, time, types
from pathlib import Path
package = types.ModuleType("sfsd")
package.__path__ = [{str(Path(sfsd.runs.__file__).parents[1])!r}]
sys.modules["sfsd"] = package
from sfsd.runs import Run
run = Run.open(sys.argv[1], Path(sys.argv[2]))
"""
LOCKING_CHILD = PRELUDE + """
with run.lock():
    print("locked", flush=True)
    sys.stdin.readline()
"""
FINISHING_CHILD = PRELUDE + """
with run.lock():
    run.mark_running(layers_total=2)
    for i in range(2):
        run.append_trace({"kind": "trial", "layer": f"l{i}", "rank": 4, "value": 1.0, "threshold": 2.0,
                          "passed": True})
        run.write_status(layers_done=i + 1, trials_done=i + 1)
    print("child finished its trials", flush=True)
    run.mark_done({"ranks": {"l0": 4, "l1": 4}, "overall_budget": 0.5})
"""
CANCELLABLE_CHILD = PRELUDE + """
with run.lock():
    run.mark_running(layers_total=100)
    for i in range(600):
        if run.cancel_requested():
            run.mark_cancelled()
            break
        run.append_trace({"kind": "trial", "layer": "l0", "rank": i, "value": 1.0, "passed": False})
        time.sleep(0.05)
"""


@pytest.fixture
def root(tmp_path):
    return tmp_path / "runs"


def _child(code: str, run: Run, root: Path) -> list[str]:
    return [sys.executable, "-c", code, run.id, str(root)]


def _wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _filled_run(root: Path) -> Run:
    """A search half-way: 2 of 4 layers decided (one intact), trials, snapshots, spectra, one evaluation."""
    run = Run.create(CONFIG, root)
    first, second = LAYERS[0]["name"], LAYERS[1]["name"]
    for rank, passed in ((4, False), (8, True)):
        run.append_trace({"kind": "trial", "layer": first, "block": 1, "role": "up_proj", "d_in": 64, "d_out": 96,
                          "beta": rank * 160 / 6144, "rank": rank, "value": 10.0 + 1 / rank, "threshold": 10.2,
                          "passed": passed, "seconds": 0.1})
    run.append_trace({"kind": "decision", "index": 0, "layer": first, "block": 1, "role": "up_proj", "d_in": 64,
                      "d_out": 96, "beta": 1280 / 6144, "rank": 8, "params_kept": 1280, "params_full": 6144,
                      "value": 10.125})
    run.append_trace({"kind": "decision", "index": 1, "layer": second, "block": 1, "role": "down_proj", "d_in": 64,
                      "d_out": 96, "beta": None, "rank": None, "params_kept": 6144, "params_full": 6144,
                      "value": 10.3})
    run.append_snapshot({"step": 0, "params": 1000, "budget": 1.0, "metric": 10.0, "evals": {}})
    run.append_snapshot({"step": 2, "params": 900, "budget": 0.9, "metric": 10.3,
                         "evals": {"piqa": {"acc": 0.6, "acc_norm": 0.62, "n": 50},
                                   "arc_easy": {"acc": 0.4, "acc_norm": 0.41, "n": 50}}})
    run.write_spectra(pd.DataFrame({"layer": [first] * 3 + [second] * 2, "block": 1,
                                    "role": ["up_proj"] * 3 + ["down_proj"] * 2, "kind": "feature",
                                    "index": [0, 1, 2, 0, 1], "value": [3.0, 2.0, 1.0, 5.0, 4.0]}))
    run.append_evaluation({"kind": "task", "task": "piqa", "split": "validation", "limit": 50,
                           "metrics": {"acc": 0.6, "acc_norm": 0.62}, "lm_eval_version": "0.4.9"})
    run.write_status(layers_total=4, layers_done=2, trials_done=2, base_metric=10.0, base_params=1000)
    return run


# ---- ids, create, open ------------------------------------------------------------------------------------


def test_run_id_is_stable_and_follows_the_request():
    run_id = run_id_for(CONFIG)
    assert run_id == run_id_for(json.loads(json.dumps(CONFIG)))
    assert run_id.startswith("search-smollm2-135m-feature-ppl-") and len(run_id.rsplit("-", 1)[1]) == 12
    volatile = {**CONFIG, "created": "2020-01-01", "versions": {"torch": "0"}, "layers": [], "format_version": 0}
    assert run_id_for(volatile) == run_id
    assert run_id_for({**CONFIG, "seed": 1}) != run_id
    assert run_id_for({**CONFIG, "metric": {"name": "ppl", "tolerance": 0.05}}) != run_id
    assert run_id_for({**CONFIG, "model": "/some/where/SmolLM2-135M"}).startswith("search-smollm2-135m-feature")


def test_create_then_open(root):
    run = Run.create(CONFIG, root)
    assert run.path == root / run.id and run.id == run_id_for(CONFIG)
    stored = json.loads((run.path / "config.json").read_text())
    assert stored["format_version"] == FORMAT_VERSION and stored["created"] and "python" in stored["versions"]
    assert stored["layers"] == LAYERS
    again = Run.create({**CONFIG, "created": "later"}, root)
    assert again.id == run.id and again.config["created"] == stored["created"]
    assert Run.open(run.id, root).config == stored
    assert run.status()["state"] == "pending" and run.result() is None
    with pytest.raises(SfsdError, match="sfsd runs"):
        Run.open("search-nothing-000000000000", root)
    with pytest.raises(SfsdError, match="no run"):
        Run.open("../etc", root)
    with pytest.raises(SfsdError, match="kind"):
        Run.create({**CONFIG, "kind": "other"}, root)


def test_layers_are_added_to_a_run_created_without_them(root):
    """The dashboard may create a run before the search, which knows the layers, opens it."""
    early = Run.create({**CONFIG, "layers": None}, root)
    assert layers_frame(early).empty
    late = Run.create(CONFIG, root)
    assert late.id == early.id and Run.open(early.id, root).config["layers"] == LAYERS
    assert len(layers_frame(Run.open(early.id, root))) == 4


def test_incompatible_or_different_run_is_refused(root):
    run = Run.create(CONFIG, root)
    config = json.loads((run.path / "config.json").read_text())
    (run.path / "config.json").write_text(json.dumps({**config, "strategy": "edited"}))
    with pytest.raises(SfsdError, match=f"different config.*sfsd runs delete {run.id}"):
        Run.create(CONFIG, root)
    (run.path / "config.json").write_text(json.dumps({**config, "format_version": 0}))
    message = f"run {run.id} was written by an older incompatible sfsd \\(format 0\\).*sfsd runs delete {run.id}"
    for attempt in (lambda: Run.create(CONFIG, root), lambda: Run.open(run.id, root)):
        with pytest.raises(SfsdError, match=message):
            attempt()
    runs = RunStore(root).list_runs()
    assert runs.loc[0, "state"] == "invalid" and "format 0" in runs.loc[0, "message"]
    RunStore(root).delete(run.id)
    assert not run.path.exists()


# ---- trace: durability and crash repair ---------------------------------------------------------------------


def test_trace_append_and_read(root):
    run = Run.create(CONFIG, root)
    run.append_trace({"kind": "trial", "layer": "a", "rank": 4, "value": 1.5, "passed": True})
    run.append_trace({"kind": "decision", "index": 0, "layer": "a", "rank": 4, "beta": 0.5})
    run.append_trace({"kind": "decision", "index": 1, "layer": "b", "rank": None, "beta": None})
    trace = run.read_trace()
    assert [r["kind"] for r in trace] == ["trial", "decision", "decision"] and all("time" in r for r in trace)
    assert [d["layer"] for d in run.decisions()] == ["a", "b"] and run.decisions()[1]["rank"] is None
    with pytest.raises(ValueError):
        run.append_trace({"kind": "bogus"})


def test_cut_last_line_is_dropped_and_repaired(root):
    run = Run.create(CONFIG, root)
    for layer in ("a", "b"):
        run.append_trace({"kind": "trial", "layer": layer})
    path = run.path / "trace.jsonl"
    with open(path, "ab") as handle:
        handle.write(b'{"kind": "trial", "lay')  # a crash in the middle of a write
    assert [r["layer"] for r in run.read_trace()] == ["a", "b"]
    assert path.read_bytes().endswith(b"}\n") and len(path.read_text().splitlines()) == 2
    with open(path, "ab") as handle:
        handle.write(b'{"kind": "trial"')  # cut again, then appended to without a read first
    run.append_trace({"kind": "trial", "layer": "c"})
    assert [r["layer"] for r in run.read_trace()] == ["a", "b", "c"]


def test_corrupt_middle_line_is_an_error(root):
    run = Run.create(CONFIG, root)
    run.append_trace({"kind": "trial", "layer": "a"})
    with open(run.path / "trace.jsonl", "ab") as handle:
        handle.write(b"{not json}\n")
    run.append_trace({"kind": "trial", "layer": "b"})
    with pytest.raises(SfsdError, match=f"trace.jsonl of run {run.id} is corrupt at line 2"):
        run.read_trace()


def test_disk_full_becomes_a_one_line_error(root, monkeypatch):
    run = Run.create(CONFIG, root)
    run.append_trace({"kind": "trial", "layer": "a"})
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[:7]))
        raise OSError(errno.ENOSPC, "No space left on device")

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    expected = f"disk full while writing run {run.id}: free space and resume with the same command"
    with monkeypatch.context() as patch:
        patch.setattr(os, "write", half_then_full)
        with pytest.raises(SfsdError, match=expected):
            run.append_trace({"kind": "trial", "layer": "b"})
    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", full)
        for write in (lambda: run.write_status(layers_done=1), lambda: run.write_result({"ranks": {}}),
                      lambda: run.append_snapshot({"step": 1})):
            with pytest.raises(SfsdError, match=expected):
                write()
    run.append_trace({"kind": "trial", "layer": "c"})  # the half-written line was cut away
    assert [r["layer"] for r in run.read_trace()] == ["a", "c"]
    assert run.status()["layers_done"] == 0 and run.result() is None


# ---- lock and state -----------------------------------------------------------------------------------------


def test_lock_held_by_another_process(root):
    run = Run.create(CONFIG, root)
    child = subprocess.Popen(_child(LOCKING_CHILD, run, root), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        expected = f"run {run.id} is already running in process {child.pid}: .*sfsd runs cancel {run.id}"
        with pytest.raises(SfsdError, match=expected):
            with run.lock():
                pass
        with pytest.raises(SfsdError, match="cancel it first"):
            RunStore(root).delete(run.id)
    finally:
        child.communicate("\n", timeout=30)
    with run.lock():
        assert run.locked
    assert not run.locked


def test_states_as_read(root):
    run = Run.create(CONFIG, root)
    run.write_status(state="running", pid=_dead_pid())
    status = run.status()
    assert status["state"] == "interrupted" and status["stored_state"] == "running"
    assert RunStore(root).list_runs().loc[0, "state"] == "interrupted"
    with run.lock():
        run.mark_running(layers_total=4)
        assert run.status()["state"] == "running" and run.is_active()
    assert run.status()["state"] == "interrupted"  # the lock is gone: the search stopped without finishing
    run.write_status(state="pending", pid=_dead_pid())
    assert run.status()["state"] == "failed" and "log.txt" in run.status()["message"]
    with pytest.raises(ValueError, match="result"):
        run.write_status(state="done")
    run.write_result({"ranks": {}})
    run.write_status(state="done")
    (run.path / "result.json").unlink()
    assert run.status()["state"] == "interrupted"  # never done without its result
    run.mark_done({"ranks": {}, "overall_budget": 0.75})
    assert run.status()["state"] == "done" and RunStore(root).list_runs().loc[0, "overall_budget"] == 0.75


def test_error_inside_lock_marks_the_run_failed(root):
    run = Run.create(CONFIG, root)
    with pytest.raises(SfsdError):
        with run.lock():
            run.mark_running()
            raise SfsdError("calibration data missing: run `sfsd data prepare`")
    status = run.status()
    assert status["state"] == "failed" and status["message"] == "calibration data missing: run `sfsd data prepare`"
    with pytest.raises(RuntimeError):
        run.mark_running()  # only inside the lock


# ---- reader frames ------------------------------------------------------------------------------------------


def test_frames_of_a_half_done_search(root):
    run = _filled_run(root)
    runs = RunStore(root).list_runs()
    assert list(runs.columns) == RUN_COLUMNS and len(runs) == 1
    row = runs.iloc[0]
    assert (row.run_id, row.kind, row.model, row.method, row.metric) == (
        run.id, "search", "smollm2-135m", "feature", "ppl")
    assert row.tolerance == 0.02 and row.state == "pending" and row.progress == 0.5
    assert (row.layers_done, row.layers_total) == (2, 4) and pd.isna(row.overall_budget)

    layers = layers_frame(run)
    assert list(layers.columns) == LAYER_COLUMNS
    assert list(layers["layer"]) == [spec["name"] for spec in LAYERS]
    assert list(layers["decided"]) == [True, True, False, False]
    assert list(layers["intact"]) == [False, True, False, False]
    assert layers.loc[0, "rank"] == 8 and pd.isna(layers.loc[1, "rank"]) and pd.isna(layers.loc[2, "rank"])
    assert layers.loc[0, "retained"] == pytest.approx(1280 / 6144) and layers.loc[1, "retained"] == 1.0
    assert layers.loc[3, "block"] == 0 and layers.loc[3, "d_out"] == 96

    snapshots = snapshots_frame(run)
    assert list(snapshots.columns[:5]) == SNAPSHOT_COLUMNS and list(snapshots["step"]) == [0, 2]
    assert snapshots.loc[1, "acc:piqa"] == 0.6 and snapshots.loc[1, "acc_norm:arc_easy"] == 0.41
    assert pd.isna(snapshots.loc[0, "acc:piqa"])
    assert str(snapshots["time"].dtype).startswith("datetime64")

    trials = trace_frame(run)
    assert len(trials) == 2 and list(trials["passed"]) == [False, True] and list(trials["rank"]) == [4, 8]
    decisions = trace_frame(run, "decision")
    assert list(decisions["index"]) == [0, 1]
    assert len(trace_frame(run, None)) == 4

    evaluations = evaluations_frame(run)
    assert evaluations.loc[0, "task"] == "piqa" and evaluations.loc[0, "acc_norm"] == 0.62
    spectra = spectra_frame(run, LAYERS[1]["name"])
    assert list(spectra.columns) == SPECTRA_COLUMNS and list(spectra["value"]) == [5.0, 4.0]
    assert len(spectra_frame(run)) == 5


def test_hand_written_folder_reads_by_the_contract(root):
    """Files written without the API (as another writer would) read the same way."""
    run_id = "search-tiny-weight-ppl-0123456789ab"
    folder = root / run_id
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "format_version": 1, "kind": "search", "model": "tiny", "method": "weight", "metric": {"name": "ppl"},
        "created": "2025-01-02T03:04:05+00:00"}))
    (folder / "status.json").write_text(json.dumps({"state": "done", "layers_total": 1, "layers_done": 1}))
    (folder / "trace.jsonl").write_text(json.dumps({
        "kind": "decision", "index": 0, "layer": "x", "block": 0, "role": "q_proj", "d_in": 8, "d_out": 8,
        "beta": 0.5, "rank": 2, "params_kept": 32, "params_full": 64, "value": 1.0}) + "\n")
    (folder / "result.json").write_text(json.dumps({"ranks": {"x": 2}, "overall_budget": 0.5}))
    store = RunStore(root)
    row = store.list_runs().iloc[0]
    assert (row.run_id, row.state, row.progress, row.overall_budget) == (run_id, "done", 1.0, 0.5)
    assert row.created == pd.Timestamp("2025-01-02T03:04:05Z")
    layers = layers_frame(store.run(run_id))
    assert list(layers["layer"]) == ["x"] and layers.loc[0, "retained"] == 0.5 and layers.loc[0, "decided"]


def test_empty_store_and_empty_run(root):
    assert list(RunStore(root).list_runs().columns) == RUN_COLUMNS and RunStore(root).list_runs().empty
    run = Run.create({**CONFIG, "layers": None}, root)
    for frame, columns in ((snapshots_frame(run), SNAPSHOT_COLUMNS), (layers_frame(run), LAYER_COLUMNS),
                           (spectra_frame(run), SPECTRA_COLUMNS)):
        assert frame.empty and list(frame.columns) == columns
    assert trace_frame(run).empty and evaluations_frame(run).empty
    assert RunStore(root).list_runs().loc[0, "progress"] == 0.0
    layers = layers_frame(Run.create({**CONFIG, "seed": 5}, root))  # layers listed, none decided yet
    assert len(layers) == 4 and not layers["decided"].any()


def test_newest_run_first(root):
    old = Run.create({**CONFIG, "seed": 1, "created": "2024-01-01T00:00:00+00:00"}, root)
    new = Run.create({**CONFIG, "seed": 2}, root)
    assert list(RunStore(root).list_runs()["run_id"]) == [new.id, old.id]


# ---- background runs ----------------------------------------------------------------------------------------


def test_launch_a_detached_child_that_finishes(root):
    run = Run.create(CONFIG, root)
    pid = launch(run, command=_child(FINISHING_CHILD, run, root))
    assert run.status()["pid"] == pid and run.status()["state"] in ("pending", "running", "done")
    _wait_for(lambda: run.status()["state"] == "done")
    assert run.status()["layers_done"] == 2 and len(run.trials()) == 2
    assert run.result()["overall_budget"] == 0.5
    assert "child finished its trials" in run.log_path.read_text()
    _wait_for(lambda: not sfsd.runs._files.pid_alive(pid))  # reaped, not left a zombie
    with pytest.raises(SfsdError, match="already finished"):
        launch(run, command=[sys.executable, "-c", "pass"])
    assert run.status()["state"] == "done"


def test_launch_then_cancel(root):
    run = Run.create(CONFIG, root)
    launch(run, command=_child(CANCELLABLE_CHILD, run, root))
    with pytest.raises(SfsdError, match="already running"):
        launch(run, command=[sys.executable, "-c", "pass"])
    _wait_for(lambda: run.status()["state"] == "running" and run.trials())
    cancel(run.id, root)
    _wait_for(lambda: run.status()["state"] == "cancelled")
    assert not run.cancel_requested() and run.status()["finished"]
    with pytest.raises(SfsdError, match="not running"):
        cancel(run.id, root)


def test_launch_builds_the_sfsd_command(root, monkeypatch):
    run = Run.create(CONFIG, root)
    seen = {}

    class FakePopen:
        pid = _dead_pid()

        def __init__(self, cmd, **kwargs):
            seen.update(cmd=cmd, **kwargs)

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    assert launch(run, ["search", "--model", "tiny"]) == FakePopen.pid
    assert seen["cmd"] == [sys.executable, "-m", "sfsd", "search", "--model", "tiny"]
    assert seen["start_new_session"] and seen["stdout"].name == str(run.log_path)
    with pytest.raises(ValueError):
        launch(run)


# ---- command line -------------------------------------------------------------------------------------------


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_list_show_cancel_delete(capsys, cache):
    assert _cli(capsys, "runs") == (0, f"no runs in {cache / 'runs'}\n", "")
    run = _filled_run(cache / "runs")
    for argv in (("runs",), ("runs", "list")):
        code, out, _ = _cli(capsys, *argv)
        assert code == 0 and run.id in out and "2/4 (50%)" in out and "pending" in out
    code, out, _ = _cli(capsys, "runs", "show", run.id)
    assert code == 0 and "strategy" in out and "greedy" in out and "2 of 4 layers" in out
    assert "layers (2 of 4 decided; showing 4)" in out and LAYERS[0]["name"] in out

    code, _, err = _cli(capsys, "runs", "cancel", run.id)
    assert code == 2 and err.startswith("sfsd: error: ") and "not running" in err
    with run.lock():
        run.mark_running()
        code, out, _ = _cli(capsys, "runs", "cancel", run.id)
        assert code == 0 and f"process {os.getpid()}" in out and run.cancel_requested()
        code, _, err = _cli(capsys, "runs", "delete", run.id)
        assert code == 2 and "cancel it first" in err
        run.mark_cancelled()
    code, out, _ = _cli(capsys, "runs", "delete", run.id)
    assert code == 0 and not run.path.exists()
    code, _, err = _cli(capsys, "runs", "show", run.id)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "sfsd runs" in err


@pytest.mark.slow
def test_a_reader_that_leaves_the_pipe_ends_the_listing_quietly(tmp_path):
    """`sfsd runs | head -1`: the closed pipe ends the command without a traceback."""
    env = {**os.environ, "SFSD_CACHE_DIR": str(tmp_path)}
    code = "import sys; from sfsd.cli import main; sys.exit(main(['runs', 'list']))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before anything is written
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in stderr and "BrokenPipe" not in stderr
