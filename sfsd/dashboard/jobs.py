"""Starting and stopping work from the dashboard: `sfsd` command lines run in background processes.

A command line (argv of `sfsd`) is parsed by the real `sfsd` parser and turned into its run config by the
command's own `config_from_args`, so the run the dashboard creates (to launch it with
`sfsd.runs.launch`) is exactly the run the child process opens. The child outlives the Streamlit
session: closing the tab does not stop it; `cancel_run` does.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sfsd.errors import SfsdError
from sfsd.models import BUNDLED
from sfsd.paths import cache_dir
from sfsd.runs import Run, RunStore, cancel, launch, timestamp
from sfsd.runs.readonly import require_writable

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
DEMO_FLAGS = ["--metric", "ppl", "--tolerance", "0.1", "--search-samples", "4", "--search-seq-len", "64",
              "--calib-source", "mix", "--calib-samples", "32", "--snapshot-every", "7",
              "--snapshot-tasks", DEMO_TASK, "--snapshot-limit", str(DEMO_SNAPSHOT_LIMIT)]
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


def demo_argvs(model: str, blocks: int | None) -> list[list[str]]:
    """The quick demo's argvs on `model`, in the order they run: its searches, then its uniform runs."""
    return demo_search_argvs(model, blocks) + demo_uniform_argvs(model, blocks)


def demo_search_argvs(model: str, blocks: int | None) -> list[list[str]]:
    """The quick demo's `sfsd search` argvs (the last DEMO_BLOCKS of the model's `blocks` blocks), one per
    method of DEMO_METHODS."""
    first = max(0, (blocks or 30) - DEMO_BLOCKS)
    return [["search", "--model", model, "--method", method, "--first-block", str(first), *DEMO_FLAGS]
            for method in DEMO_METHODS]


def demo_uniform_argvs(model: str, blocks: int | None) -> list[list[str]]:
    """The quick demo's `sfsd uniform` argvs: base, feature and weight at DEMO_BETA on the searches' blocks,
    evaluated on the snapshots' documents (DEMO_TASK, DEMO_SNAPSHOT_LIMIT) and on perplexity @128."""
    last = min(DEMO_BLOCKS, blocks) if blocks else DEMO_BLOCKS
    return [uniform_argv(model, method, DEMO_BETA, last, [DEMO_TASK], DEMO_SNAPSHOT_LIMIT, [128], DEMO_PPL_TOKENS,
                         "mix", 32) for method in DEMO_UNIFORM_METHODS]


def demo_argv(model: str, blocks: int | None) -> list[str]:
    """The quick demo's first search (feature space)."""
    return demo_argvs(model, blocks)[0]


def demo_run_ids(model: str, blocks: int | None) -> list[str]:
    """The ids of the runs the quick demo creates on `model`, in the order they run."""
    from sfsd.runs import run_id_for

    return [run_id_for(run_config(argv)) for argv in demo_argvs(model, blocks)]


def demo_record_path() -> Path:
    """Where the quick demo's chain writes what it ran and how long it took (see sfsd.dashboard.chain)."""
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
    return start_all(demo_argvs(model, blocks), root, record=demo_record_path())


def search_argv(model: str, method: str = "feature", metric: str = "ppl", tolerance: float = 0.05,
                task: str | None = None, limit: int | None = None, acc_norm: bool = False,
                search_samples: int = 32, search_seq_len: int = 128, strategy: str = "linear",
                first_block: int = 0, roles: list[str] | None = None, calib_source: str = "mix",
                calib_samples: int = 512, calib_seq_len: int = 128, snapshot_every: int = 10,
                snapshot_tasks: list[str] | None = None, snapshot_limit: int = 100, dtype: str = "auto") -> list[str]:
    """The `sfsd search ...` argv of the Runs page's form (flags at their defaults are still written;
    --dtype only when not auto, so the ids of runs made before it existed still match)."""
    argv = ["search", "--model", model, "--method", method, "--metric", metric, "--tolerance", f"{tolerance:g}"]
    if metric == "task":
        argv += ["--task", str(task)]
        if limit:
            argv += ["--limit", str(int(limit))]
        if acc_norm:
            argv.append("--acc-norm")
    else:
        argv += ["--search-samples", str(int(search_samples)), "--search-seq-len", str(int(search_seq_len))]
    argv += ["--strategy", strategy, "--first-block", str(int(first_block))]
    if roles:
        argv += ["--roles", ",".join(roles)]
    argv += ["--calib-source", calib_source, "--calib-samples", str(int(calib_samples)),
             "--calib-seq-len", str(int(calib_seq_len)), "--snapshot-every", str(int(snapshot_every))]
    if snapshot_tasks:
        argv += ["--snapshot-tasks", ",".join(snapshot_tasks), "--snapshot-limit", str(int(snapshot_limit))]
    if dtype != "auto":
        argv += ["--dtype", dtype]
    return argv


def uniform_argv(model: str, method: str, beta: float, last_blocks: int, tasks: list[str] | None = None,
                 limit: int | None = 100, ppl_seq_lens: list[int] | None = None, ppl_tokens: int | None = None,
                 calib_source: str | None = None, calib_samples: int | None = None,
                 calib_seq_len: int | None = None) -> list[str]:
    """`sfsd uniform ...`: Table 1's protocol (last N blocks at one beta) compressed and evaluated as a run
    of kind "uniform"; method "none" evaluates the base model. Unset options keep the command's defaults."""
    argv = ["uniform", "--model", model, "--method", method, "--beta", f"{beta:g}", "--last-blocks",
            str(int(last_blocks))]
    if tasks:
        argv += ["--tasks", ",".join(tasks)]
    if limit:
        argv += ["--limit", str(int(limit))]
    if ppl_seq_lens:
        argv += ["--ppl-seq-lens", ",".join(str(int(n)) for n in ppl_seq_lens)]
    if ppl_tokens:
        argv += ["--ppl-tokens", str(int(ppl_tokens))]
    for flag, value in (("--calib-source", calib_source), ("--calib-samples", calib_samples),
                        ("--calib-seq-len", calib_seq_len)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def command_line(argv: list[str]) -> str:
    return shlex.join(["sfsd", *argv])


def has_command(name: str) -> bool:
    """Whether this sfsd has the subcommand `name` (e.g. "uniform")."""
    from sfsd.cli import build_parser

    actions = build_parser()._actions
    return any(name in action.choices for action in actions if isinstance(action, argparse._SubParsersAction))


def parse(argv: list[str]) -> argparse.Namespace:
    """argv parsed by the real `sfsd` parser; a usage error becomes an SfsdError with argparse's message."""
    from sfsd.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(argv)
    except SystemExit as exc:
        lines = [line for line in err.getvalue().strip().splitlines() if line.strip()]
        raise SfsdError(lines[-1] if lines else f"invalid command: {command_line(argv)}") from exc


# Per command: the function of its CLI module that turns parsed args into the run config it creates.
CONFIG_BUILDERS = {"search": "config_from_args", "uniform": "uniform_config_from_args"}


def run_config(argv: list[str]) -> dict | None:
    """The run config the command will create (None when the dashboard cannot tell)."""
    args = parse(argv)
    module = sys.modules.get(getattr(args.func, "__module__", ""))
    build = getattr(module, CONFIG_BUILDERS.get(args.command, ""), None)
    if build is None:
        return None
    config = build(args)
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def check_model(model: str) -> None:
    """Fail early on a model folder that does not exist (hub ids and bundled names are left to the child)."""
    from sfsd.models import resolve_model

    if model not in BUNDLED:
        resolve_model(model)


def start(argv: list[str], root: Path | None = None) -> Started:
    """Create the command's run and launch the command on it in the background.

    A finished run is not started again; a running one is left alone; an interrupted, cancelled or failed
    one resumes. A command whose config cannot be derived is started detached without a run of ours
    (it creates its own)."""
    require_writable("start a run")
    args = parse(argv)
    if getattr(args, "model", None):
        check_model(args.model)
    config = run_config(argv)
    if config is None:
        pid = spawn(argv)
        return Started(None, pid, f"started `{command_line(argv)}` (process {pid})")
    run = Run.create(config, root)
    status = run.status()
    if status["state"] == "done":
        return Started(run.id, None, f"run {run.id} is already done: its results are in the store")
    if run.is_active():
        return Started(run.id, None, f"run {run.id} is already running (process {status.get('pid')})")
    pid = launch(run, argv=argv)
    verb = "resumed" if status["state"] in ("interrupted", "cancelled", "stopped", "failed") else "started"
    return Started(run.id, pid, f"{verb} run {run.id} (process {pid})")


def start_all(argvs: list[list[str]], root: Path | None = None, record: Path | None = None) -> list[Started]:
    """Create every command's run, then run the unfinished ones one after the other in ONE background process
    (`python -m sfsd.dashboard.chain`): the first is launched, the others wait as pending ("queued"). With
    `record`, the chain writes there what it ran and its measured duration."""
    require_writable("start runs")
    results, todo = [], []
    for argv in argvs:
        config = run_config(argv)
        if config is None:
            raise SfsdError(f"cannot tell which run `{command_line(argv)}` creates: start it on its own")
        run = Run.create(config, root)
        status = run.status()
        if status["state"] == "done":
            results.append(Started(run.id, None, f"run {run.id} is already done"))
        elif run.is_active():
            results.append(Started(run.id, None, f"run {run.id} is already running"))
        else:
            todo.append((run, argv))
    if not todo:
        return results
    first = todo[0][0]
    chain = [sys.executable, "-m", "sfsd.dashboard.chain", json.dumps([argv for _, argv in todo])]
    if record is not None:
        chain.append(str(record))
    pid = launch(first, command=chain)
    results.append(Started(first.id, pid, f"started run {first.id} (process {pid})"))
    for place, ((run, _), (previous, _)) in enumerate(zip(todo[1:], todo, strict=False), start=2):
        run.write_status(state="pending", pid=pid, launched=timestamp(), finished=None, eta_s=None,
                         message=f"queued {place} of {len(todo)}: starts after {previous.id}")
        results.append(Started(run.id, pid, f"queued run {run.id} ({place} of {len(todo)}) after {previous.id}"))
    return results


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
        log.write(f"--- {command_line(argv)}\n".encode())
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
    from sfsd.compress import CalibrationSpec, compress, save_compressed
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
             calibration=CalibrationSpec(**config["calibration"]), progress=False)
    return save_compressed(model, tokenizer, out)

