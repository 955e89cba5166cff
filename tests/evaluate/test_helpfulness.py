"""Issue 23 (7): helpfulness graded by reading. Benign answers of three SmolLM2-135M policies
(reference, SafeDPO, DPO-HARMLESS of `make real`) to prompts never trained on, each graded
helpful / partial / unhelpful by a reader who did not know which model wrote it
(scripts/make_helpfulness_fixture.py; the rubric: tests/fixtures/helpfulness/RUBRIC.md), 60
graded twice by two readers. The prompts are not stored: each row names its benchmark and
index. The numbers the docs quote (docs/real_unseen.json) must be the fixture's."""

import json

import pytest
from helpers import FIXTURES, ROOT, read_jsonl

from safedpo.evaluate.outcomes import GRADES, grade_agreement, grade_rates

GRADED = read_jsonl(FIXTURES / "helpfulness" / "benign_graded.jsonl")
MODELS = ("reference", "safedpo", "dpo_harmless")


def test_fixture_is_what_it_says():
    from safedpo.data.prompt_sets import load_benchmark

    assert {r["model"] for r in GRADED} == set(MODELS)
    for m in MODELS:
        assert sum(r["model"] == m for r in GRADED) >= 100
    assert {r["grade"] for r in GRADED} <= set(GRADES)
    assert {r["second_grade"] for r in GRADED if "second_grade" in r} <= set(GRADES)
    assert sum("second_grade" in r for r in GRADED) >= 50
    prompts = {name: load_benchmark(name) for name in {r["source"] for r in GRADED}}
    for r in GRADED:
        assert prompts[r["source"]][r["index"]]["harmful"] is False
    # the same prompts for every model
    keys = {m: {(r["source"], r["index"]) for r in GRADED if r["model"] == m} for m in MODELS}
    assert keys["reference"] == keys["safedpo"] == keys["dpo_harmless"]


def test_docs_quote_the_fixture():
    doc = json.loads((ROOT / "docs" / "real_unseen.json").read_text())
    rates, agreement = grade_rates(GRADED), grade_agreement(GRADED)
    assert doc["helpfulness"] == json.loads(json.dumps(rates))  # every rate, CI and test
    assert doc["grader_agreement"] == pytest.approx(agreement)
    assert doc["grader_agreement_reference_safedpo"] == pytest.approx(grade_agreement(
        [r for r in GRADED if r["model"] in ("reference", "safedpo")]))
