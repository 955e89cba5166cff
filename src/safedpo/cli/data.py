"""``safedpo data SOURCE``: show what the safety transformation (or a baseline view) does to a dataset."""

from __future__ import annotations

import argparse
import json
import sys

from safedpo.data.sources import load_rows
from safedpo.data.transform import (
    BOTH_UNSAFE,
    OUTCOMES,
    VIEWS,
    both_unsafe_mode,
    build_pairs,
    check_view,
)
from safedpo.data.types import DataError

_SHOW_ERRORS = 5  # skipped rows listed on stderr (all are counted)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not (sep and key and value):
        raise argparse.ArgumentTypeError(f"expected CANONICAL=COLUMN, got '{text}'")
    return key, value


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a .jsonl/.json/.parquet/.csv file, a folder (save_to_disk or "
                        "data files), or a hub id such as PKU-Alignment/PKU-SafeRLHF")
    parser.add_argument("--split", default="train", help="split of a hub dataset or folder")
    parser.add_argument("--config", default=None, help="config name of a hub dataset")
    parser.add_argument("--column-map", nargs="+", action="extend", type=_key_value, default=[],
                        metavar="CANONICAL=COLUMN",
                        help="use the dataset's COLUMN for a canonical name, e.g. prompt=question")
    parser.add_argument("--view", choices=list(VIEWS), default="safedpo",
                        help=" | ".join(f"{k}: {v}" for k, v in VIEWS.items()))
    parser.add_argument("--keep-both-unsafe", action="store_true",
                        help="keep rows whose two responses are unsafe (ablation; safedpo view; "
                        "= --both-unsafe keep)")
    parser.add_argument("--both-unsafe", choices=list(BOTH_UNSAFE), default="drop",
                        help="safedpo view, rows with two unsafe responses: " + " | ".join(
                            f"{k}: {v}" for k, v in BOTH_UNSAFE.items()))
    parser.add_argument("--skip-invalid", action="store_true",
                        help="skip invalid rows (counted and listed) instead of failing")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _table(stats: dict) -> str:
    lines = [f"source  {stats['source']}", f"view    {stats['view']}: {VIEWS[stats['view']]}"]
    if stats["both_unsafe"] and stats["view"] == "safedpo":
        lines.append(f"        both-unsafe rows: {stats['both_unsafe_mode']}")
    lines.append("")
    for key in ("rows",) + OUTCOMES + ("invalid", "pairs", "both_unsafe"):
        label = "invalid (skipped)" if key == "invalid" else key.replace("_", " ")
        lines.append(f"  {label:<18}{stats[key]:>8}")
    if stats["categories"]:
        width = max(len("harm category"), *map(len, stats["categories"]))
        lines += ["", f"{'harm category':<{width}}  {'rows':>6}" + "".join(f"  {k:>7}" for k in OUTCOMES)]
        for name, c in stats["categories"].items():
            lines.append(f"{name:<{width}}  {c['rows']:>6}" + "".join(f"  {c[k]:>7}" for k in OUTCOMES))
    return "\n".join(lines)


def run(name: str, args: argparse.Namespace) -> int:
    try:
        check_view(args.view, args.keep_both_unsafe, args.both_unsafe)
        result = load_rows(args.source, split=args.split, config_name=args.config,
                           column_map=dict(args.column_map), skip_invalid=args.skip_invalid)
    except (DataError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pairs, stats = build_pairs(result, args.view, keep_both_unsafe=args.keep_both_unsafe,
                               both_unsafe=args.both_unsafe)
    mode = both_unsafe_mode(args.keep_both_unsafe, args.both_unsafe)
    stats = {"source": result.source, **stats, "keep_both_unsafe": mode == "keep",
             "both_unsafe_mode": mode, "errors": [str(e) for e in result.invalid]}
    if result.invalid:
        print(f"skipped {len(result.invalid)} invalid row(s):", file=sys.stderr)
        for error in result.invalid[:_SHOW_ERRORS]:
            print(f"  {error}", file=sys.stderr)
        if len(result.invalid) > _SHOW_ERRORS:
            print(f"  ... and {len(result.invalid) - _SHOW_ERRORS} more", file=sys.stderr)
    print(json.dumps(stats) if args.json else _table(stats))
    return 0
