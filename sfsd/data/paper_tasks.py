"""The paper's six commonsense tasks on the hub: their train rows, as lm-eval presents a document.

The `paper` evaluation suite is lm-eval's own tasks (boolq, piqa, hellaswag, winogrande, arc_easy,
arc_challenge), which evaluate each task's validation split (ARC: test). The paper calibrates on the
tasks' **train** splits, so everything here reads train rows only, from the same hub datasets lm-eval's
task YAMLs name (lm-eval 0.4: `dataset_path` / `dataset_name`).

Each task's train rows are split once, with the pack's fixed seed (independent of --seed, so no
choice of seeds can make them meet): a seeded 20% is reserved for search (`PAPER_SEARCH_FRACTION`),
the other 80% is what `--calib-source paper-mix` draws from. Evaluation never sees either.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import numpy as np

from sfsd.data.hub import HubSplit, load_hub_split, require_hub_split
from sfsd.data.splits import rng_for
from sfsd.errors import SfsdError

PAPER_TRAIN: dict[str, HubSplit] = {
    "boolq": HubSplit("aps/super_glue", "boolq", "train"),
    "piqa": HubSplit("baber/piqa", None, "train"),
    "hellaswag": HubSplit("Rowan/hellaswag", None, "train"),
    "winogrande": HubSplit("allenai/winogrande", "winogrande_xl", "train"),
    "arc_easy": HubSplit("allenai/ai2_arc", "ARC-Easy", "train"),
    "arc_challenge": HubSplit("allenai/ai2_arc", "ARC-Challenge", "train"),
}
PAPER_TASK_NAMES = tuple(PAPER_TRAIN)
# The split lm-eval evaluates for each task (none of them is train).
PAPER_EVAL_SPLIT = {"boolq": "validation", "piqa": "validation", "hellaswag": "validation",
                    "winogrande": "validation", "arc_easy": "test", "arc_challenge": "test"}
# The same datasets' evaluation splits, as lm-eval reads them (local copies make the paper suite run offline).
PAPER_EVAL: dict[str, HubSplit] = {t: replace(spec, split=PAPER_EVAL_SPLIT[t]) for t, spec in PAPER_TRAIN.items()}
PAPER_SEARCH_FRACTION = 0.2
# Tasks a task-guided search can score (single context, one continuation per choice).
PAPER_SEARCH_TASKS = ("boolq", "piqa", "hellaswag", "arc_easy", "arc_challenge")
PARTITION_SEED = 0  # fixed: the search/calibration partition of the train rows never moves
OFFLINE_MIX_HINT = "use --calib-source mix, the offline pack's calibration rows"


def _hellaswag_clean(text: str) -> str:
    # lm-eval's hellaswag/utils.py preprocess: WikiHow bracket artefacts removed.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def choice_row(task: str, row: dict[str, Any], row_id: str) -> dict[str, Any]:
    """A train row as lm-eval presents it: {id, query, choices, label} (context, continuations, gold).

    lm-eval scores "query" + " " + choice for each choice; winogrande instead varies the context
    (the sentence up to "_" with each option) against one continuation, so it has no such row.
    """
    if task == "boolq":
        query, choices = f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", ["no", "yes"]
        label = int(row["label"])
    elif task == "piqa":
        query, choices, label = f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], int(row["label"])
    elif task == "hellaswag":
        ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
        query = _hellaswag_clean(row["activity_label"] + ": " + ctx)
        choices, label = [_hellaswag_clean(e) for e in row["endings"]], int(row["label"])
    elif task in ("arc_easy", "arc_challenge"):
        query, choices = f"Question: {row['question']}\nAnswer:", list(row["choices"]["text"])
        label = row["choices"]["label"].index(row["answerKey"])
    else:
        raise SfsdError(f"{task} has no single-context form (lm-eval scores it with one context per choice): "
                        f"choose one of {', '.join(PAPER_SEARCH_TASKS)}")
    return {"id": row_id, "query": query, "choices": choices, "label": label}


def document_text(task: str, row: dict[str, Any]) -> str:
    """One train row as lm-eval's zero-shot prompt followed by the gold answer (calibration text)."""
    if task == "winogrande":
        # lm-eval: the context is the sentence up to "_" with the option, the target what follows.
        cut = row["sentence"].index("_")
        option = row["option1"] if row["answer"] == "1" else row["option2"]
        return row["sentence"][:cut] + option + " " + row["sentence"][cut + 1 :].strip()
    doc = choice_row(task, row, "")
    return doc["query"] + " " + doc["choices"][doc["label"]]


def partition(task: str, n_rows: int) -> dict[str, np.ndarray]:
    """Train row indices of a task: a seeded 20% "search" and the other 80% "calib" (sorted)."""
    order = rng_for(PARTITION_SEED, f"paper-train:{task}").permutation(n_rows)
    n_search = int(np.floor(n_rows * PAPER_SEARCH_FRACTION + 0.5))
    return {"search": np.sort(order[:n_search]), "calib": np.sort(order[n_search:])}


def require_paper_train(what: str = "paper-mix", hint: str = OFFLINE_MIX_HINT) -> None:
    for spec in PAPER_TRAIN.values():
        require_hub_split(spec, what, hint)


def paper_documents(task: str, part: str, what: str = "paper-mix", hint: str = OFFLINE_MIX_HINT) -> list[str]:
    """The `part` ("calib" or "search") of a task's train rows as documents (train-file order)."""
    data = load_hub_split(PAPER_TRAIN[task], what, hint)
    rows = data.select(partition(task, len(data))[part].tolist())
    return [document_text(task, row) for row in rows]


def paper_search_rows(task: str) -> list[dict[str, Any]]:
    """The task's search rows (its seeded 20% of train) as {id, query, choices, label, split} (train order)."""
    hint = "use --suite offline, the pack's search split"
    data = load_hub_split(PAPER_TRAIN[task], f"search on --suite paper {task}", hint)
    indices = partition(task, len(data))["search"].tolist()
    return [{**choice_row(task, data[i], f"{task}-train-{i}"), "split": "search"} for i in indices]


def search_rows_description(task: str) -> str:
    return (f"a seeded {PAPER_SEARCH_FRACTION:.0%} of {task}'s train split ({PAPER_TRAIN[task].label}, partition "
            f"seed {PARTITION_SEED}); evaluation reads {PAPER_EVAL_SPLIT[task]}, paper-mix the other "
            f"{1 - PAPER_SEARCH_FRACTION:.0%} of train")
