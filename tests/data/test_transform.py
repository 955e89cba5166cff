"""The safety transformation (keep / swap / drop, keep_both_unsafe) and the baseline views.
Expected pairs are written out by hand from PAPER.md's rules."""

import pytest
from helpers import PKU_V1_SMALL

from safedpo.data import PreferenceRow, SafetyPair, build_pairs, load_pairs, load_rows

FIXTURE = PKU_V1_SMALL


def row(better, safe_0, safe_1, safer=None):
    return PreferenceRow("p", "r0", "r1", better, better if safer is None else safer, safe_0, safe_1,
                         meta={"row": 1})


def only_pair(r, view="safedpo", **kw):
    pairs, stats = build_pairs([r], view, **kw)
    return (pairs[0] if pairs else None), stats


# ------------------------------------------------------------------ SafeDPO transformation T

@pytest.mark.parametrize("better", [0, 1])
def test_keep_when_better_is_safe(better):
    other = f"r{1 - better}"
    # y_l unsafe: h~_l = 1
    pair, stats = only_pair(row(better, safe_0=better == 0, safe_1=better == 1))
    assert pair == SafetyPair("p", f"r{better}", other, False, True)
    assert (stats["kept"], stats["swapped"], stats["dropped"]) == (1, 0, 0)
    # y_l safe too: h~_l = 0
    pair, _ = only_pair(row(better, True, True))
    assert pair == SafetyPair("p", f"r{better}", other, False, False)


@pytest.mark.parametrize("better", [0, 1])
def test_swap_when_only_the_less_helpful_is_safe(better):
    pair, stats = only_pair(row(better, safe_0=better == 1, safe_1=better == 0))
    assert pair == SafetyPair("p", f"r{1 - better}", f"r{better}", False, True)
    assert (stats["kept"], stats["swapped"], stats["dropped"]) == (0, 1, 0)
    assert pair.meta["outcome"] == "swapped"


def test_drop_both_unsafe_and_keep_them_in_the_ablation():
    pair, stats = only_pair(row(1, False, False))
    assert pair is None
    assert (stats["kept"], stats["swapped"], stats["dropped"], stats["both_unsafe"]) == (0, 0, 1, 1)
    pair, stats = only_pair(row(1, False, False), keep_both_unsafe=True)
    assert pair == SafetyPair("p", "r1", "r0", True, True)  # unchanged, both flags set
    assert (stats["kept"], stats["dropped"], stats["both_unsafe"]) == (1, 0, 1)


def test_sign_trap_safe_flags_in_unsafe_flags_out():
    # Dataset: response_0 is SAFE (True), response_1 is NOT safe. Pair: chosen NOT unsafe, rejected unsafe.
    pair, _ = only_pair(row(0, safe_0=True, safe_1=False))
    assert (pair.chosen, pair.chosen_unsafe, pair.rejected, pair.rejected_unsafe) == ("r0", False, "r1", True)


# ------------------------------------------------------------------ views

# The 7 fixture rows: (better, safer, safe_0, safe_1) =
# (0,0,T,F) (0,1,F,T) (1,0,F,F) (1,0,T,T) (0,1,F,T) (1,1,F,T) (1,0,T,T)
EXPECTED = {
    # view: (kept, swapped, dropped, [(chosen id, chosen_unsafe, rejected_unsafe) per surviving row])
    "safedpo": (4, 2, 1, [(0, False, True), (1, False, True), (1, False, False), (1, False, True),
                          (1, False, True), (1, False, False)]),
    "helpful": (7, 0, 0, [(0, False, True), (0, True, False), (1, True, True), (1, False, False),
                          (0, True, False), (1, False, True), (1, False, False)]),
    "harmless": (2, 5, 0, [(0, False, True), (1, False, True), (0, True, True), (0, False, False),
                           (1, False, True), (1, False, True), (0, False, False)]),
    "safebetter": (4, 0, 3, [(0, False, True), (1, False, False), (1, False, True), (1, False, False)]),
}


@pytest.mark.parametrize("view", list(EXPECTED))
def test_views_on_fixture(view):
    rows = load_rows(FIXTURE).rows
    pairs, stats = build_pairs(rows, view)
    kept, swapped, dropped, chosen = EXPECTED[view]
    assert (stats["rows"], stats["kept"], stats["swapped"], stats["dropped"], stats["invalid"]) == (
        7, kept, swapped, dropped, 0)
    assert stats["pairs"] == len(pairs) == len(chosen) and stats["both_unsafe"] == 1
    surviving = [r for r in rows if r.meta["row"] in [p.meta["row"] for p in pairs]]
    for pair, r, (cid, cu, ru) in zip(pairs, surviving, chosen):
        assert (pair.prompt, pair.chosen, pair.rejected) == (r.prompt, r.response(cid), r.response(1 - cid))
        assert (pair.chosen_unsafe, pair.rejected_unsafe) == (cu, ru)


def test_per_category_counts_and_pair_metadata():
    pairs, stats = load_pairs(FIXTURE)
    assert stats["source"] == str(FIXTURE)
    assert stats["categories"] == {
        "Animal Abuse": {"rows": 1, "kept": 0, "swapped": 1, "dropped": 0},
        "Cybercrime": {"rows": 1, "kept": 0, "swapped": 0, "dropped": 1},  # both responses: one row
        "Economic Crime": {"rows": 2, "kept": 1, "swapped": 1, "dropped": 0},
        "Insulting Behavior": {"rows": 1, "kept": 1, "swapped": 0, "dropped": 0},
        "Privacy Violation": {"rows": 1, "kept": 0, "swapped": 0, "dropped": 1},
        "Violence": {"rows": 1, "kept": 0, "swapped": 1, "dropped": 0},
        "White-Collar Crime": {"rows": 1, "kept": 0, "swapped": 1, "dropped": 0},
    }
    swapped = pairs[1]  # fixture row 2: the safe refusal becomes chosen
    assert swapped.chosen == "I can't help with harming animals." and swapped.rejected == "Poison its food."
    assert swapped.meta == {"harm_categories": [[], ["Violence", "Animal Abuse"]], "severity": [0, 2],
                            "source": str(FIXTURE), "row": 2, "outcome": "swapped"}


def test_load_pairs_counts_invalid_rows(tmp_path):
    lines = FIXTURE.read_text().splitlines()
    lines[3] = lines[3].replace('"better_response_id": 1', '"better_response_id": 5')
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    pairs, stats = load_pairs(path, skip_invalid=True)
    # row 4 (both safe, kept) is now invalid: 7 rows = 3 kept + 2 swapped + 1 dropped + 1 invalid
    assert (stats["rows"], stats["kept"], stats["swapped"], stats["dropped"], stats["invalid"]) == (7, 3, 2, 1, 1)
    assert len(pairs) == 5


def test_unknown_view_and_misused_ablation():
    with pytest.raises(ValueError, match="unknown view 'safe'; choose one of: safedpo, helpful"):
        build_pairs([], "safe")
    with pytest.raises(ValueError, match="keep_both_unsafe applies to view 'safedpo' only"):
        load_pairs(FIXTURE, "helpful", keep_both_unsafe=True)
