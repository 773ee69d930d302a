"""The run store: one folder per search (or uniform) run under `sfsd.paths.runs_dir()`.

The search writes a run through `Run` (config, status, trace, snapshots, spectra, result); the
dashboard reads it only through `RunStore` and the frame functions, and starts or stops background
runs with `launch` and `cancel`. See `sfsd/runs/run.py` for the folder layout.
"""

from sfsd.runs._files import timestamp
from sfsd.runs.frames import (
    DECISION_COLUMNS,
    EVALUATION_COLUMNS,
    LAYER_COLUMNS,
    SNAPSHOT_COLUMNS,
    TRIAL_COLUMNS,
    evaluations_frame,
    layers_frame,
    snapshots_frame,
    spectra_frame,
    trace_frame,
)
from sfsd.runs.ids import FORMAT_VERSION, KINDS, NON_IDENTITY_FIELDS, identity, run_id_for
from sfsd.runs.launch import cancel, launch
from sfsd.runs.run import SPECTRA_COLUMNS, STATUS_DEFAULTS, STORED_STATES, Run, decided_ranks
from sfsd.runs.store import RUN_COLUMNS, RunStore

__all__ = [
    "decided_ranks",
    "DECISION_COLUMNS",
    "EVALUATION_COLUMNS",
    "FORMAT_VERSION",
    "KINDS",
    "LAYER_COLUMNS",
    "NON_IDENTITY_FIELDS",
    "RUN_COLUMNS",
    "SNAPSHOT_COLUMNS",
    "SPECTRA_COLUMNS",
    "STATUS_DEFAULTS",
    "STORED_STATES",
    "TRIAL_COLUMNS",
    "Run",
    "RunStore",
    "cancel",
    "evaluations_frame",
    "identity",
    "launch",
    "layers_frame",
    "run_id_for",
    "snapshots_frame",
    "spectra_frame",
    "timestamp",
    "trace_frame",
]
