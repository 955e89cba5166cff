"""From preference rows to ``SafetyPair``s: the SafeDPO safety transformation and the baseline views.

Every view decides, per row, which response is chosen (or drops the row); the UNSAFE flags of
the pair are always read from the row's SAFE flags for the response that ended up chosen or
rejected, so they are correct in every view.
"""

from __future__ import annotations

from pathlib import Path

from safedpo.data.sources import LoadResult, PreferenceRow, load_rows
from safedpo.data.types import DataError, SafetyPair

# view -> what "chosen" means (printed by `safedpo data`)
VIEWS = {
    "safedpo": "keep if the more helpful response is safe, swap if only the other one is "
               "safe, drop if both are unsafe",
    "helpful": "DPO-HELPFUL: chosen = more helpful response (better_response_id)",
    "harmless": "DPO-HARMLESS: chosen = safer response (safer_response_id); 'swapped' counts rows "
                "where that is not the more helpful one",
    "safebetter": "DPO-SAFEBETTER: rows whose more helpful response is safe; chosen = more helpful",
}
OUTCOMES = ("kept", "swapped", "dropped")
# What view 'safedpo' does with a row whose two responses are unsafe (docs/margins.md).
BOTH_UNSAFE = {
    "drop": "drop the row (the paper)",
    "keep": "keep it unchanged, margin 0 (the paper's ablation; keep_both_unsafe: true)",
    "by_severity": "the less severe response is chosen (outcome kept or swapped), margin "
                   "both_unsafe_delta * (s_l - s_w); equal or missing severities: dropped",
}


def both_unsafe_mode(keep_both_unsafe: bool = False, both_unsafe: str = "drop") -> str:
    """The effective both-unsafe mode: ``both_unsafe``, where the old bool
    ``keep_both_unsafe: true`` means ``keep`` (it cannot be combined with by_severity)."""
    if both_unsafe not in BOTH_UNSAFE:
        raise ValueError(f"unknown both_unsafe '{both_unsafe}'; choose one of: "
                         f"{', '.join(BOTH_UNSAFE)}")
    if keep_both_unsafe:
        if both_unsafe == "by_severity":
            raise ValueError("keep_both_unsafe: true and both_unsafe: by_severity contradict "
                             "each other; set only both_unsafe")
        return "keep"
    return both_unsafe


def check_view(view: str, keep_both_unsafe: bool = False, both_unsafe: str = "drop") -> None:
    if view not in VIEWS:
        raise ValueError(f"unknown view '{view}'; choose one of: {', '.join(VIEWS)}")
    mode = both_unsafe_mode(keep_both_unsafe, both_unsafe)
    if keep_both_unsafe and view != "safedpo":
        raise ValueError(f"keep_both_unsafe applies to view 'safedpo' only, not '{view}'")
    if mode != "drop" and view != "safedpo":
        raise ValueError(f"both_unsafe: {mode} applies to view 'safedpo' only, not '{view}'")


def transform(row: PreferenceRow, view: str = "safedpo", *,
              keep_both_unsafe: bool = False, both_unsafe: str = "drop"
              ) -> tuple[str, int | None]:
    """-> (outcome in OUTCOMES, id of the chosen response, None when dropped)."""
    better, safer = row.better_response_id, row.safer_response_id
    if view == "helpful":
        return "kept", better
    if view == "harmless":
        return ("kept" if safer == better else "swapped"), safer
    if view == "safebetter":
        return ("kept", better) if row.is_safe(better) else ("dropped", None)
    # SafeDPO's transformation T: y_w = response_{better}; SAFE flags, so h_w = not is_safe(better).
    if row.is_safe(better):
        return "kept", better
    if row.is_safe(1 - better):
        return "swapped", 1 - better
    # Both unsafe: the paper drops the row; keeping it unchanged is the ablation; by_severity
    # prefers the less severe response when the two severities are known and differ.
    mode = both_unsafe_mode(keep_both_unsafe, both_unsafe)
    if mode == "keep":
        return "kept", better
    if mode == "by_severity":
        s_better, s_other = row.meta.get(f"severity_{better}"), row.meta.get(f"severity_{1 - better}")
        if s_better is not None and s_other is not None and s_better != s_other:
            return ("kept", better) if s_better < s_other else ("swapped", 1 - better)
    return "dropped", None


def _pair(row: PreferenceRow, chosen: int, outcome: str) -> SafetyPair:
    rejected = 1 - chosen
    m = row.meta
    return SafetyPair(
        prompt=row.prompt,
        chosen=row.response(chosen),
        rejected=row.response(rejected),
        chosen_unsafe=not row.is_safe(chosen),  # sign trap: the data stores SAFE flags
        rejected_unsafe=not row.is_safe(rejected),
        meta={"harm_categories": [m.get(f"harm_categories_{chosen}"), m.get(f"harm_categories_{rejected}")],
              "severity": [m.get(f"severity_{chosen}"), m.get(f"severity_{rejected}")],
              "source": m.get("file"), "row": m.get("row"), "outcome": outcome},
    )


def build_pairs(rows: list[PreferenceRow] | LoadResult, view: str = "safedpo", *,
                keep_both_unsafe: bool = False, both_unsafe: str = "drop"
                ) -> tuple[list[SafetyPair], dict]:
    """Apply ``view`` to every row. ``rows`` may be a ``LoadResult`` (then skipped rows count as invalid).

    stats: view, rows (data rows read, valid + invalid), kept, swapped, dropped, invalid
    (rows == kept + swapped + dropped + invalid), pairs, both_unsafe (rows with two unsafe
    responses), categories ({harm category: {rows (either response has it), kept, swapped,
    dropped}}; empty when the data has no harm categories). Pair meta: ``harm_categories`` and
    ``severity`` as [chosen, rejected], ``source``, ``row``, ``outcome``.
    """
    check_view(view, keep_both_unsafe, both_unsafe)
    invalid = len(rows.invalid) if isinstance(rows, LoadResult) else 0
    if isinstance(rows, LoadResult):
        rows = rows.rows
    stats = {"view": view, "rows": len(rows) + invalid, "kept": 0, "swapped": 0, "dropped": 0,
             "invalid": invalid, "pairs": 0, "both_unsafe": 0, "categories": {}}
    pairs = []
    for row in rows:
        outcome, chosen = transform(row, view, keep_both_unsafe=keep_both_unsafe,
                                    both_unsafe=both_unsafe)
        stats[outcome] += 1
        stats["both_unsafe"] += not (row.is_response_0_safe or row.is_response_1_safe)
        names = set(row.meta.get("harm_categories_0") or []) | set(row.meta.get("harm_categories_1") or [])
        for name in names:
            counts = stats["categories"].setdefault(name, dict.fromkeys(("rows",) + OUTCOMES, 0))
            counts["rows"] += 1
            counts[outcome] += 1
        if chosen is not None:
            pairs.append(_pair(row, chosen, outcome))
    stats["pairs"] = len(pairs)
    stats["categories"] = dict(sorted(stats["categories"].items()))
    return pairs, stats


def require_pairs(pairs: list[SafetyPair], stats: dict) -> None:
    """A DataError that says why a view kept no pair, and what to do, when ``pairs`` is empty."""
    if pairs:
        return
    rows, view, source = stats["rows"], stats["view"], stats.get("source")
    if rows and stats["both_unsafe"] == stats["dropped"] == rows:
        why = (f"every row ({rows} rows) has two unsafe responses, and view '{view}' drops "
               "such rows; use --keep_both_unsafe true (an ablation) or another --view "
               "(e.g. harmless)")
    elif rows and stats["invalid"] == rows:
        why = f"all {rows} rows are invalid (see the warnings above)"
    else:
        why = (f"view '{view}' kept no pair of {rows} rows (dropped {stats['dropped']}, "
               f"invalid {stats['invalid']}, {stats['both_unsafe']} with two unsafe "
               "responses); try another --view")
    raise DataError(f"no training pairs: {why}", file=str(source) if source else None)


def load_pairs(source: str | Path, view: str = "safedpo", *, split: str = "train",
               config_name: str | None = None, column_map: dict[str, str] | None = None,
               skip_invalid: bool = False, keep_both_unsafe: bool = False,
               both_unsafe: str = "drop") -> tuple[list[SafetyPair], dict]:
    """``load_rows`` then ``build_pairs``; stats also has ``source``."""
    check_view(view, keep_both_unsafe, both_unsafe)  # fail before reading a large dataset
    result = load_rows(source, split=split, config_name=config_name, column_map=column_map,
                       skip_invalid=skip_invalid)
    pairs, stats = build_pairs(result, view, keep_both_unsafe=keep_both_unsafe,
                               both_unsafe=both_unsafe)
    return pairs, {"source": result.source, **stats}
