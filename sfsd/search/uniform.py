"""Table 1's uniform protocol as a stored run: compress the last N blocks at one beta, then evaluate.

A `uniform` run holds its evaluations (tasks on the eval split, perplexity) and a result with the
parameters, MACs and overall budget, so the dashboard and the benchmarks read them like any run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sfsd import options
from sfsd.compress import CalibrationSpec, check_compress_request, compress, describe
from sfsd.errors import SfsdError
from sfsd.models import check_placement, load_model, parse_dtype, sequence_identity
from sfsd.runs import Run


@dataclass(kw_only=True)
class UniformConfig:
    """Table 1's protocol as a run; each field is an option of `sfsd uniform` (sfsd.options)."""

    model: str = options.MODEL.field()
    method: str = options.UNIFORM_METHOD.field()  # or "none" for the base model
    beta: float = options.BETA.field()
    last_blocks: int = options.LAST_BLOCKS.field()
    factors: str = options.FACTORS.field()  # how the thin layers are stored, so what a beta buys
    calibration: CalibrationSpec = options.nested(CalibrationSpec)
    tasks: list[str] = options.TASKS.field()
    limit: int | None = options.LIMIT.field()  # documents per task of the eval split
    ppl_seq_lens: list[int] = options.PPL_SEQ_LENS.field()
    ppl_tokens: int | None = options.PPL_TOKENS.field()  # first tokens of the wiki eval split
    dtype: str = options.DTYPE.field()
    calibration_stream: str = options.CALIBRATION_STREAM.field()

    def __post_init__(self):
        parse_dtype(self.dtype)
        if self.method != "none":
            check_compress_request(self.method, self.beta, self.calibration, factors=self.factors)
        if self.calibration_stream != options.OPEN_LOOP:
            from sfsd.closed_loop import check_stream

            check_stream(self.calibration_stream, self.method)
        from sfsd.data import OFFLINE_TASKS

        unknown = [t for t in self.tasks if t not in OFFLINE_TASKS]
        if unknown:
            raise SfsdError(f"unknown task {unknown[0]!r}: choose from {', '.join(OFFLINE_TASKS)}")

    def to_dict(self) -> dict:
        data = {**asdict(self), "kind": "uniform"}
        for name in ("dtype", "factors", "calibration_stream"):  # left out at their defaults: runs made before
            if data[name] == UniformConfig.__dataclass_fields__[name].default:  # they existed keep their ids
                del data[name]
        return data | sequence_identity(self.model)

    @classmethod
    def from_dict(cls, data: dict) -> UniformConfig:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["calibration"] = CalibrationSpec(**fields.get("calibration", {}))
        return cls(**fields)


def run_uniform(config: UniformConfig, root: Path | None = None, device: str | None = None,
                progress: bool = True) -> Run:
    """Compress, measure and evaluate once; a finished run is returned as it is."""
    from sfsd.evaluate import evaluate_tasks, perplexity
    from sfsd.evaluate.perplexity import run_metrics

    check_placement(device)  # a bad device map fails before the run exists
    run = Run.create(config.to_dict(), root)
    if run.status()["state"] == "done":
        return run
    with run.lock():
        run.mark_running(layers_total=1, layers_done=0)
        model, tokenizer = load_model(config.model, device, config.dtype)
        start = time.perf_counter()
        if config.method != "none":
            compress(model, tokenizer, config.method, beta=config.beta, last_blocks=config.last_blocks,
                     calibration=config.calibration, progress=progress, factors=config.factors,
                     calibration_stream=config.calibration_stream)
        seconds = time.perf_counter() - start
        info = describe(model, seq_len=128)
        key = f"{run.id}"
        done = {(e.get("kind"), e.get("task"), e.get("metrics", {}).get("seq_len")) for e in run.read_evaluations()}
        for task in config.tasks:  # one at a time, so that a cancel is seen between them
            if run.cancel_requested() or ("task", task, None) in done:
                continue
            results = evaluate_tasks(model, tokenizer, [task], split="eval", limit=config.limit, model_key=key)
            for row in results.summary.itertuples():
                run.append_evaluation({"kind": "task", "task": row.task, "split": "eval", "limit": config.limit,
                                       "metrics": {"acc": row.acc, "acc_norm": row.acc_norm, "n": int(row.n)},
                                       "lm_eval_version": row.lm_eval_version})
        for seq_len in config.ppl_seq_lens:
            if run.cancel_requested() or ("ppl", "wiki", seq_len) in done:
                continue
            ppl = perplexity(model, tokenizer, split="eval", seq_len=seq_len, max_tokens=config.ppl_tokens,
                             model_key=key, progress=progress)
            run.append_evaluation({"kind": "ppl", "task": "wiki", "split": "eval", "limit": config.ppl_tokens,
                                   "metrics": run_metrics(ppl)})
        if run.cancel_requested():
            run.mark_cancelled(layers_done=0)
            return run
        result = {"params": info["params"], "macs": info["macs"], "macs_seq_len": 128,
                  "overall_budget": info["overall_budget"], "layers_decomposed": info["layers_decomposed"],
                  "compress_seconds": seconds, "blocks": info["blocks"]}
        if "params_weights" in info["table"]:  # structured pruning: each layer's kept share, for the heatmap
            result["layers"] = kept_per_layer(info["table"])
        run.mark_done(result, layers_done=1)
    return run


def kept_per_layer(table) -> list[dict]:
    """Each linear layer's full and kept weight parameters (a pruned model's `describe` table), in block order."""
    return [{"name": row.name, "block": int(row.block), "role": row.role, "d_in": int(row.d_in),
             "d_out": int(row.d_out), "params_full": int(row.params_full), "params_kept": int(row.params_weights)}
            for row in table.itertuples(index=False)]
