"""Starting and stopping work from the dashboard: runs created from their config, continued in background
processes by run id.

A page builds a run's config object (`SearchConfig`, `UniformConfig`, whose fields are the options of
`sfsd.options`), the run is created in the store from it, and a detached `sfsd runs resume RUN_ID` computes it:
the process opens exactly the run the dashboard created. The child outlives the Streamlit session: closing the tab
does not stop it; `cancel_run` does. The equivalent terminal command a page shows is generated from the same
option declarations (`command_line`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sfsd import options
from sfsd.compress import CalibrationSpec
from sfsd.decompose import TWO_FACTOR
from sfsd.errors import SfsdError
from sfsd.models import BUNDLED
from sfsd.paths import cache_dir
from sfsd.runs import Run, RunStore, cancel, launch, run_id_for, timestamp
from sfsd.runs.readonly import require_writable
from sfsd.search.config import SearchConfig
from sfsd.search.metrics import MetricSpec
from sfsd.search.uniform import UniformConfig

RunConfig = SearchConfig | UniformConfig

# The quick demo: one background process runs a feature-space then a weight-space search over the last
# DEMO_BLOCKS blocks of the demo model (perplexity within 10% of the base), each scoring DEMO_TASK on a few
# eval-split documents at every snapshot: enough to colour the heatmap, draw two accuracy-versus-parameters
# curves and compare the spectra. Then Table 1's uniform protocol on the same blocks at DEMO_BETA: the base
# model, feature space and weight space at the same budget, on the same documents (perplexity and DEMO_TASK),
# so that Table 1 has a same-budget comparison to show. The chain records its measured duration in
# demo_record_path().
DEMO_BLOCKS = 4
DEMO_METHODS = ("feature", "weight")
DEMO_TASK = "piqa"
DEMO_SNAPSHOT_LIMIT = 20
DEMO_METRIC = dict(name="ppl", tolerance=0.1, samples=4, seq_len=64)
DEMO_CALIBRATION = dict(source="mix", samples=32)
DEMO_SNAPSHOT_EVERY = 7
DEMO_BETA = 0.46  # Table 1's beta: the paper's ~80% point when applied to the last 12 of 30 blocks
DEMO_UNIFORM_METHODS = ("none", *DEMO_METHODS)  # "none": the base model, the reference row
DEMO_PPL_TOKENS = 4096  # the first 4,096 wiki eval tokens at 128 per window: seconds per model on a CPU


@dataclass
class Started:
    """What `start` did: launched (pid set), or why not (message)."""

    run_id: str | None
    pid: int | None
    message: str

    @property
    def launched(self) -> bool:
        return self.pid is not None


def demo_configs(model: str, blocks: int | None) -> list[RunConfig]:
    """The quick demo's runs on `model`, in the order they run: its searches, then its uniform runs."""
    return demo_search_configs(model, blocks) + demo_uniform_configs(model, blocks)


def demo_search_configs(model: str, blocks: int | None) -> list[SearchConfig]:
    """The quick demo's searches (the last DEMO_BLOCKS of the model's `blocks` blocks), one per method of
    DEMO_METHODS."""
    first = max(0, (blocks or 30) - DEMO_BLOCKS)
    return [SearchConfig(model=model, method=method, first_block=first, metric=MetricSpec(**DEMO_METRIC),
                         calibration=CalibrationSpec(**DEMO_CALIBRATION), snapshot_every=DEMO_SNAPSHOT_EVERY,
                         snapshot_tasks=[DEMO_TASK], snapshot_limit=DEMO_SNAPSHOT_LIMIT)
            for method in DEMO_METHODS]


def demo_uniform_configs(model: str, blocks: int | None) -> list[UniformConfig]:
    """The quick demo's uniform runs: base, feature and weight at DEMO_BETA on the searches' blocks, evaluated on
    the snapshots' documents (DEMO_TASK, DEMO_SNAPSHOT_LIMIT) and on perplexity @128."""
    last = min(DEMO_BLOCKS, blocks) if blocks else DEMO_BLOCKS
    return [UniformConfig(model=model, method=method, beta=DEMO_BETA, last_blocks=last, tasks=[DEMO_TASK],
                          limit=DEMO_SNAPSHOT_LIMIT, ppl_seq_lens=[128], ppl_tokens=DEMO_PPL_TOKENS,
                          calibration=CalibrationSpec(**DEMO_CALIBRATION))
            for method in DEMO_UNIFORM_METHODS]


def demo_run_ids(model: str, blocks: int | None) -> list[str]:
    """The ids of the runs the quick demo creates on `model`, in the order they run."""
    return [run_id_of(config) for config in demo_configs(model, blocks)]


def run_id_of(config: RunConfig) -> str:
    return run_id_for(config.to_dict())


def command_line(config: RunConfig) -> str:
    """The terminal command that computes the same run (`sfsd search ...` or `sfsd uniform ...`)."""
    return options.command_line([config.to_dict()["kind"]], config)


def label(config: RunConfig) -> str:
    """"search feature", "uniform base": what a chain's record calls a run."""
    kind = config.to_dict()["kind"]
    return f"{kind} {'base' if config.method == 'none' else config.method}"


def demo_record_path() -> Path:
    """Where the quick demo's chain writes what it ran and how long it took (see sfsd.cli.chain)."""
    return cache_dir() / "jobs" / "quick-demo.json"


def demo_record() -> dict | None:
    """The last quick demo's record: started, finished (None while it runs), commands with their seconds and
    exit codes; None when no demo was started here or the record cannot be read."""
    try:
        record = json.loads(demo_record_path().read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("commands"), list) else None


def start_demo(model: str, blocks: int | None, root: Path | None = None) -> list[Started]:
    """The quick demo's unfinished runs, one after the other in one background process that records its
    duration."""
    return start_all(demo_configs(model, blocks), root, record=demo_record_path())


def check_model(model: str) -> None:
    """Fail early on a model folder that does not exist (hub ids and bundled names are left to the child)."""
    from sfsd.models import resolve_model

    if model not in BUNDLED:
        resolve_model(model)


def start(config: RunConfig, root: Path | None = None) -> Started:
    """Create the config's run and continue it in the background (`sfsd runs resume RUN_ID`).

    A finished run is not started again; a running one is left alone; an interrupted, cancelled or failed
    one resumes."""
    require_writable("start a run")
    check_model(config.model)
    run = Run.create(config.to_dict(), root)
    status = run.status()
    if status["state"] == "done":
        return Started(run.id, None, f"run {run.id} is already done: its results are in the store")
    if run.is_active():
        return Started(run.id, None, f"run {run.id} is already running (process {status.get('pid')})")
    pid = launch(run, argv=resume_argv(run.id))
    verb = "resumed" if status["state"] in ("interrupted", "cancelled", "stopped", "failed") else "started"
    return Started(run.id, pid, f"{verb} run {run.id} (process {pid})")


def resume(run_id: str, root: Path | None = None) -> Started:
    """Continue a stored search or uniform run (interrupted, cancelled, stopped or failed) from its own config."""
    from sfsd.search.resume import config_of

    require_writable("resume a run")
    return start(config_of(Run.open(run_id, root)), root)


def resume_argv(run_id: str) -> list[str]:
    return ["runs", "resume", run_id]


def start_all(configs: Sequence[RunConfig], root: Path | None = None, record: Path | None = None) -> list[Started]:
    """Create every config's run, then run the unfinished ones one after the other in ONE background process
    (`python -m sfsd.cli.chain`): the first is launched, the others wait as pending ("queued"). With
    `record`, the chain writes there what it ran and its measured duration."""
    require_writable("start runs")
    results, todo = [], []
    for config in configs:
        check_model(config.model)
        run = Run.create(config.to_dict(), root)
        status = run.status()
        if status["state"] == "done":
            results.append(Started(run.id, None, f"run {run.id} is already done"))
        elif run.is_active():
            results.append(Started(run.id, None, f"run {run.id} is already running"))
        else:
            todo.append((run, config))
    if not todo:
        return results
    first = todo[0][0]
    steps = [{"argv": resume_argv(run.id), "label": label(config), "log": str(run.log_path)} for run, config in todo]
    chain = [sys.executable, "-m", "sfsd.cli.chain", json.dumps(steps)]
    if record is not None:
        chain.append(str(record))
    pid = launch(first, command=chain)
    results.append(Started(first.id, pid, f"started run {first.id} (process {pid})"))
    for place, ((run, _), (previous, _)) in enumerate(zip(todo[1:], todo, strict=False), start=2):
        run.write_status(state="pending", pid=pid, launched=timestamp(), finished=None, eta_s=None,
                         message=f"queued {place} of {len(todo)}: starts after {previous.id}")
        results.append(Started(run.id, pid, f"queued run {run.id} ({place} of {len(todo)}) after {previous.id}"))
    return results


def start_snapshot_eval(run_id: str, tasks: Sequence[str], limit: int) -> Started:
    """`sfsd snapshot-eval` on a finished search, detached (it adds evaluations to the existing run)."""
    argv = snapshot_eval_argv(run_id, tasks, limit)
    pid = spawn(argv)
    return Started(run_id, pid, f"started `{shlex.join(['sfsd', *argv])}` (process {pid})")


def snapshot_eval_argv(run_id: str, tasks: Sequence[str], limit: int) -> list[str]:
    return ["snapshot-eval", run_id, *options.TASKS.format(list(tasks)), *options.LIMIT.format(int(limit))]


def queue_place(message: str | None) -> int:
    """A queued run's place in its chain ("queued 3 of 5: ..." -> 3); 1 for any other (the running one)."""
    match = re.match(r"queued (\d+) of \d+", str(message or ""))
    return int(match.group(1)) if match else 1


def spawn(argv: list[str]) -> int:
    """`python -m sfsd <argv>` detached, output appended to <cache>/logs/dashboard.log."""
    require_writable("start a command")
    logs = cache_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "dashboard.log", "ab") as log:
        log.write(f"--- {shlex.join(['sfsd', *argv])}\n".encode())
        log.flush()
        process = subprocess.Popen([sys.executable, "-m", "sfsd", *argv], stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    return process.pid


def cancel_run(run_id: str, root: Path | None = None) -> str:
    """A search stops after its current trial (cancelled, resumable); other runs have no cancel point: the
    process working on them is terminated (the run then reads as interrupted)."""
    require_writable("cancel a run")
    run = RunStore(root).run(run_id)
    if run.config.get("kind") == "search":
        cancel(run_id, root)
        return f"asked run {run_id} to stop: it ends as cancelled after its current trial"
    status = run.status()
    if status["state"] != "running" or not status.get("pid"):
        raise SfsdError(f"run {run_id} is not running (state {status['state']}): there is nothing to stop")
    try:
        os.kill(int(status["pid"]), signal.SIGTERM)
    except ProcessLookupError:
        pass
    return f"stopped the process of run {run_id} ({status['pid']})"


def delete_run(run_id: str, root: Path | None = None) -> str:
    require_writable("delete a run")
    RunStore(root).delete(run_id)
    return f"deleted run {run_id}"


def materialize_run(run_id: str, root: Path | None = None) -> Path:
    """Save a finished search run's compressed model under <cache>/models/<run_id> (once)."""
    require_writable("save a model")
    from sfsd.paths import models_dir
    from sfsd.search import materialize

    out = models_dir() / run_id
    if (out / "config.json").exists():
        return out
    return materialize(RunStore(root).run(run_id), out)


def save_uniform_model(run_id: str, root: Path | None = None) -> Path:
    """Save a finished uniform run's compressed model (Table 1's row) under <cache>/models/<run_id> (once), so
    that the Disagreement and Bias pages can evaluate it: the run's own method, beta, last blocks and
    calibration, rebuilt from the decompositions it cached."""
    require_writable("save a model")
    from sfsd.compress import compress, save_compressed
    from sfsd.models import load_model
    from sfsd.paths import models_dir

    out = models_dir() / run_id
    if (out / "config.json").exists():
        return out
    run = RunStore(root).run(run_id)
    config = run.config
    if config.get("kind") != "uniform" or config.get("method") in (None, "none"):
        raise SfsdError(f"run {run_id} is not a compressed uniform run: only Table 1's compressed rows are saved")
    if run.status()["state"] != "done":
        raise SfsdError(f"run {run_id} has not finished: wait for it (or resume it on the Weight vs feature page)")
    model, tokenizer = load_model(config["model"], None, config.get("dtype", "auto"))
    compress(model, tokenizer, config["method"], beta=config["beta"], last_blocks=config["last_blocks"],
             calibration=CalibrationSpec(**config["calibration"]), progress=False,
             factors=config.get("factors", TWO_FACTOR))
    return save_compressed(model, tokenizer, out)

