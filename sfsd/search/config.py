"""The request of a surgical search; its canonical form names the run."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sfsd import options
from sfsd.compress import CalibrationSpec
from sfsd.decompose import TWO_FACTOR, check_factors, check_layer_method
from sfsd.errors import SfsdError
from sfsd.models import parse_dtype, sequence_identity
from sfsd.search.allocation import ALLOCATIONS, check_target
from sfsd.search.metrics import MetricSpec
from sfsd.search.strategies import STRATEGIES


@dataclass(kw_only=True)
class SearchConfig:
    """A search's request; each field is an option of `sfsd search` and of the Runs page's form (sfsd.options)."""

    model: str = options.MODEL.field()
    method: str = options.METHOD.field()
    metric: MetricSpec = options.nested(MetricSpec)
    # None: linear, or spectrum with a target budget (resolved at construction, so the stored config names it)
    strategy: str | None = options.STRATEGY.field()
    first_block: int = options.FIRST_BLOCK.field()  # blocks below this one are never touched
    roles: list[str] | None = options.ROLES.field()  # None: every role of the architecture
    calibration: CalibrationSpec = options.nested(CalibrationSpec)
    snapshot_every: int = options.SNAPSHOT_EVERY.field()  # decided layers between snapshots (and one at the end)
    snapshot_tasks: list[str] = options.SNAPSHOT_TASKS.field()  # evaluated on the eval split at each snapshot
    snapshot_limit: int | None = options.SNAPSHOT_LIMIT.field()
    engine: str = options.ENGINE.field()  # "fast" (prefix cache) or "reference" (full model per trial)
    dtype: str = options.DTYPE.field()  # the model's dtype; materialize and snapshot-eval load in it too
    # With a target budget, `strategy` names an allocation (ALLOCATIONS) instead of a per-layer walk.
    # Left out of the stored config when None, so runs without one keep their ids.
    target_budget: float | None = options.TARGET_BUDGET.field()
    # alg1 only: bisections of the tolerance after the doubling (None: ALG1_BISECTIONS); fewer runs, a
    # coarser tolerance, the same landing at B (the last run is stopped at B). Left out when None.
    alg1_bisections: int | None = options.ALG1_BISECTIONS.field()
    # alg1 only: the factor the tolerance grows by until its run reaches B (None: ALG1_GROWTH, 2). A larger
    # factor runs fewer tolerances far from the start, with a wider bracket to bisect. Left out when None.
    alg1_growth: float | None = options.ALG1_GROWTH.field()
    # How the thin layers are stored and counted (two-factor, compact): every budget the allocation spends and
    # every trial layer follow it. Left out of the stored config at its default, so earlier runs keep their ids.
    factors: str = options.FACTORS.field()
    # Target-budget searches only: the ranks are allocated on open-loop trials, then the final model is built with
    # this stream (closed-loop or anchored statistics need every upstream rank first). Left out at its default.
    calibration_stream: str = options.CALIBRATION_STREAM.field()

    def __post_init__(self):
        if self.strategy is None:
            self.strategy = "linear" if self.target_budget is None else "spectrum"
        check_layer_method(self.method)
        parse_dtype(self.dtype)
        if self.target_budget is not None:
            self.target_budget = check_target(self.target_budget)
            if self.strategy not in ALLOCATIONS:
                raise SfsdError(f"strategy {self.strategy!r} does not allocate a target budget: choose one of "
                                f"{', '.join(ALLOCATIONS)}")
        elif self.strategy not in STRATEGIES:
            hint = " (with --target-budget)" if self.strategy in ALLOCATIONS else ""
            raise SfsdError(f"unknown strategy {self.strategy!r}{hint}: choose one of {', '.join(STRATEGIES)}, "
                            f"or {', '.join(ALLOCATIONS)} with --target-budget")
        if self.alg1_bisections is not None and (self.alg1_bisections < 0 or self.strategy != "alg1"):
            raise SfsdError("--alg1-bisections must be >= 0 and goes with --strategy alg1 (and a --target-budget)")
        if self.alg1_growth is not None and (not self.alg1_growth > 1 or self.strategy != "alg1"):
            raise SfsdError("--alg1-growth must be > 1 and goes with --strategy alg1 (and a --target-budget)")
        check_factors(self.factors)
        if self.factors != TWO_FACTOR and self.target_budget is None:
            raise SfsdError(f"Algorithm 1 searches in two factors only: --factors {self.factors} goes with "
                            "--target-budget (strategies uniform, spectrum, sensitivity, refined) or `sfsd uniform`")
        if self.factors != TWO_FACTOR and self.strategy == "alg1":
            raise SfsdError(f"--strategy alg1 runs Algorithm 1, which searches in two factors only: --factors "
                            f"{self.factors} goes with --strategy uniform, spectrum, sensitivity or refined")
        if self.calibration_stream != options.OPEN_LOOP:
            from sfsd.closed_loop import check_stream

            check_stream(self.calibration_stream, self.method)
            if self.target_budget is None or self.strategy == "alg1":
                raise SfsdError(f"--calibration-stream {self.calibration_stream} builds a model from ranks decided "
                                "beforehand: it goes with --target-budget and an allocation strategy (uniform, "
                                "spectrum, sensitivity, refined); Algorithm 1's trials are open loop")
        if self.engine not in ("fast", "reference"):
            raise SfsdError(f"unknown engine {self.engine!r}: choose fast or reference")
        if self.first_block < 0 or self.snapshot_every < 1:
            raise SfsdError("--first-block must be >= 0 and --snapshot-every >= 1")
        if self.snapshot_tasks:
            from sfsd.data import OFFLINE_TASKS

            unknown = [t for t in self.snapshot_tasks if t not in OFFLINE_TASKS]
            if unknown:
                raise SfsdError(f"unknown task {unknown[0]!r}: choose from {', '.join(OFFLINE_TASKS)}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["kind"] = "search"
        if data["metric"]["suite"] == "offline":
            del data["metric"]["suite"]  # the default, left out so that earlier runs keep their ids
        else:
            from sfsd.data.paper_tasks import search_rows_description

            data["search_rows"] = search_rows_description(self.metric.task)  # which rows, stated in the run
        if data["dtype"] == "auto":  # the runs made before --dtype existed keep their ids
            del data["dtype"]
        if data["target_budget"] is None:
            del data["target_budget"]
        for key in ("alg1_bisections", "alg1_growth"):
            if data[key] is None:
                del data[key]
        if data["factors"] == TWO_FACTOR:  # the default, left out so that earlier runs keep their ids
            del data["factors"]
        if data["calibration_stream"] == options.OPEN_LOOP:  # the default: earlier runs keep their ids
            del data["calibration_stream"]
        return data | sequence_identity(self.model)

    @classmethod
    def from_dict(cls, data: dict) -> SearchConfig:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["metric"] = MetricSpec(**fields.get("metric", {}))
        fields["calibration"] = CalibrationSpec(**fields.get("calibration", {}))
        return cls(**fields)
