"""Search metrics: a small registry. Each metric owns its search batches and scores model logits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from sfsd import options
from sfsd.errors import SfsdError
from sfsd.registry import Registry


@dataclass(frozen=True, kw_only=True)
class MetricSpec:
    """What the search must keep: metric name, tolerance and the search data (options: sfsd.options)."""

    name: str = options.METRIC.field()
    tolerance: float = options.TOLERANCE.field()
    compounding: bool = options.COMPOUNDING.field()  # threshold from the last accepted value
    task: str | None = options.SEARCH_TASK.field()  # `task` metric: which task (of `suite`)
    use_norm: bool = options.ACC_NORM.field()  # `task` metric: acc_norm instead of acc
    limit: int | None = options.SEARCH_LIMIT.field()  # `task` metric: first N documents of the search split
    # `ppl` metric: windows of the wiki search split. 32 x 128 = 4,096 tokens: with 8 windows (1,024 tokens)
    # a +5% search ended +12% on the eval split, with 32 at +6.6% (docs/results.md, bench.search_transfer).
    samples: int = options.SEARCH_SAMPLES.field()
    seq_len: int = options.SEARCH_SEQ_LEN.field()  # `ppl` metric: tokens per window
    batch_size: int = options.SEARCH_BATCH_SIZE.field()
    # `task` metric: "offline" (the pack's search split) or "paper" (a seeded 20% of the hub task's
    # train split, which lm-eval's evaluation never reads; see sfsd.data.paper_tasks)
    suite: str = options.SUITE.field()

    def __post_init__(self):
        if self.name not in METRICS:
            raise SfsdError(f"unknown metric {self.name!r}: choose one of {', '.join(METRICS)}")
        if not (isinstance(self.tolerance, (int, float)) and self.tolerance >= 0 and math.isfinite(self.tolerance)):
            raise SfsdError(f"tolerance must be a non-negative number, got {self.tolerance}")
        if self.samples < 1 or self.seq_len < 2 or self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise SfsdError("search data sizes must be positive: check --search-samples, --search-seq-len, --limit")
        if self.suite != "offline" and self.name != "task":
            raise SfsdError(f"--suite {self.suite} applies to the task metric only: drop it or use --metric task")
        METRICS[self.name].check_spec(self)


class SearchMetric:
    """Scores the search batches; `higher_is_better` says which way the threshold points."""

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    batches: list[torch.Tensor]

    def __init__(self, spec: MetricSpec, tokenizer: Any, model: Any):
        self.spec = spec

    @classmethod
    def check_spec(cls, spec: MetricSpec) -> None:
        """Reject a bad spec before any model is loaded."""

    def batch_statistic(self, index: int, logits: torch.Tensor) -> Any:
        raise NotImplementedError

    def reduce(self, statistics: list[Any]) -> float:
        raise NotImplementedError

    def threshold(self, base: float, last_accepted: float) -> float:
        reference = last_accepted if self.spec.compounding else base
        if self.higher_is_better:
            return reference - self.spec.tolerance
        return reference * (1 + self.spec.tolerance)

    def passes(self, value: float, threshold: float) -> bool:
        return value >= threshold if self.higher_is_better else value <= threshold


METRICS: Registry[type[SearchMetric]] = Registry("metric")


def register_metric(cls: type[SearchMetric]) -> type[SearchMetric]:
    """Class decorator: register a SearchMetric under its `name`."""
    return METRICS.register(cls.name, cls)


@register_metric
class Perplexity(SearchMetric):
    """Perplexity on windows of the wiki search split; keep ppl <= base * (1 + tolerance)."""

    name = "ppl"
    higher_is_better = False

    def __init__(self, spec: MetricSpec, tokenizer: Any, model: Any):
        super().__init__(spec, tokenizer, model)
        from sfsd.data import wiki_text
        from sfsd.evaluate.perplexity import window_bos, window_tokens

        chunks = window_tokens(tokenizer, wiki_text("search"), spec.seq_len, spec.samples * spec.seq_len,
                               window_bos(model, tokenizer))
        if chunks.shape[0] < spec.samples:
            raise SfsdError(f"the wiki search split has only {chunks.shape[0]} windows of {spec.seq_len} tokens: "
                            "lower --search-samples")
        self.batches = list(chunks.split(spec.batch_size))

    def batch_statistic(self, index: int, logits: torch.Tensor) -> tuple[float, int]:
        targets = self.batches[index][:, 1:].to(logits.device)
        shifted = logits[:, :-1].float()
        nll = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), reduction="sum")
        return float(nll), targets.numel()

    def reduce(self, statistics: list[tuple[float, int]]) -> float:
        return math.exp(sum(s for s, _ in statistics) / sum(n for _, n in statistics))


@register_metric
class TaskAccuracy(SearchMetric):
    """Accuracy on a task's search split, scored as lm-eval scores it; keep acc >= base - tolerance."""

    name = "task"
    higher_is_better = True

    @classmethod
    def check_spec(cls, spec: MetricSpec) -> None:
        from sfsd.data import OFFLINE_TASKS
        from sfsd.data.paper_tasks import PAPER_SEARCH_TASKS

        if spec.suite not in ("offline", "paper"):
            raise SfsdError(f"unknown suite {spec.suite!r} for the task metric: use offline or paper")
        tasks = OFFLINE_TASKS if spec.suite == "offline" else PAPER_SEARCH_TASKS
        if spec.task not in tasks:
            raise SfsdError(f"the task metric with --suite {spec.suite} needs --task, one of {', '.join(tasks)} "
                            f"(got {spec.task!r})")

    def __init__(self, spec: MetricSpec, tokenizer: Any, model: Any):
        super().__init__(spec, tokenizer, model)
        from sfsd.evaluate import encode_request, task_docs, task_requests
        from sfsd.evaluate.harness import rows_requests
        from sfsd.evaluate.scoring import lm_eval_batches, model_max_length

        if spec.suite == "paper":
            from sfsd.data.paper_tasks import paper_search_rows

            rows = paper_search_rows(spec.task)
            self.docs = rows[: spec.limit] if spec.limit else rows
            self.requests = rows_requests(f"paper_{spec.task}", "search", self.docs)
        else:
            self.requests = task_requests(spec.task, "search", spec.limit)
            self.docs = task_docs(spec.task, "search", spec.limit)
        self._pairs = [encode_request(tokenizer, r.context, r.continuation) for r in self.requests]
        batches = lm_eval_batches(self._pairs, spec.batch_size, model_max_length(model))
        self.batches = [batch for batch, _ in batches]
        self._rows = [rows for _, rows in batches]

    def batch_statistic(self, index: int, logits: torch.Tensor) -> list[tuple[int, float]]:
        from sfsd.evaluate.scoring import gather_continuation

        return [(i, float(gather_continuation(logits[row], end, self._pairs[i][1]).sum()))
                for row, (i, end) in enumerate(self._rows[index])]

    def reduce(self, statistics: list[list[tuple[int, float]]]) -> float:
        from sfsd.evaluate import choice_records, score_choices

        logliks = [0.0] * len(self.requests)
        for batch in statistics:
            for request, value in batch:
                logliks[request] = value
        scores = score_choices(choice_records(self.spec.task, self.requests, logliks, self.docs))
        return scores["acc_norm" if self.spec.use_norm else "acc"]

