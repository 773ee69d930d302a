"""Evaluation: multiple-choice tasks through lm-eval, perplexity, StereoSet ICAT, disagreement.

Every result is cached under `<cache>/evals/`, keyed by the model (`model_key`, default the
weights' `model_fingerprint`), the data, the split, the limit and the lm-eval version. Importing
this package does not import lm-eval (that happens on the first evaluation).
"""

from sfsd.cache import model_fingerprint
from sfsd.evaluate.cache import EvalCache, entry_key
from sfsd.evaluate.compare import disagreement, flips
from sfsd.evaluate.harness import (
    ChoiceRequest,
    TaskResults,
    choice_records,
    evaluate_tasks,
    lm_eval_version,
    score_choices,
    task_docs,
    task_requests,
)
from sfsd.evaluate.perplexity import perplexity
from sfsd.evaluate.scoring import continuation_logprobs, encode_request, request_logliks
from sfsd.evaluate.stereoset import BiasResults, icat, stereoset, stereoset_scores
from sfsd.evaluate.tasks import PAPER_TASKS, SUITES, task_config

__all__ = [
    "PAPER_TASKS",
    "SUITES",
    "BiasResults",
    "ChoiceRequest",
    "EvalCache",
    "TaskResults",
    "entry_key",
    "choice_records",
    "continuation_logprobs",
    "disagreement",
    "encode_request",
    "evaluate_tasks",
    "flips",
    "icat",
    "lm_eval_version",
    "model_fingerprint",
    "perplexity",
    "request_logliks",
    "score_choices",
    "stereoset",
    "stereoset_scores",
    "task_config",
    "task_docs",
    "task_requests",
]
