"""Continue a stored run from its own config (what the dashboard starts, by run id, and `sfsd runs resume`)."""

from __future__ import annotations

from pathlib import Path

from sfsd.errors import SfsdError
from sfsd.runs import Run, run_id_for
from sfsd.search.config import SearchConfig
from sfsd.search.uniform import UniformConfig

# the run kinds that can be continued from their stored config, with the config class of each
RESUMABLE = {"search": SearchConfig, "uniform": UniformConfig}


def config_of(run: Run) -> SearchConfig | UniformConfig:
    """The config object of a stored run; refused when it would name another run (a config of an older sfsd)."""
    kind = run.config.get("kind")
    if kind not in RESUMABLE:
        raise SfsdError(f"run {run.id} is a {kind!r} run: only {' and '.join(RESUMABLE)} runs can be resumed")
    config = RESUMABLE[kind].from_dict(run.config)
    if run_id_for(config.to_dict()) != run.id:
        raise SfsdError(f"run {run.id}'s stored config does not rebuild its own id (written by another sfsd version): "
                        "start the run again from its command line")
    return config


def resume_run(run_id: str, root: Path | None = None, device=None, progress: bool = True,
               stop_at_budget: float | None = None) -> Run:
    """Continue (or start) the stored run `run_id` with its own config; a finished run is returned as it is."""
    from sfsd.search.entry import run_search
    from sfsd.search.uniform import run_uniform

    run = Run.open(run_id, root)
    config = config_of(run)
    if isinstance(config, UniformConfig):
        return run_uniform(config, root, device, progress)
    return run_search(config, root, device, progress, stop_at_budget=stop_at_budget)
