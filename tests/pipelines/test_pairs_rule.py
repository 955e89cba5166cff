"""The default labelling rule of `safedpo pairs`, on hand-made answers, and the rows it writes
(PKU-SafeRLHF v1 columns, read back by the real loader and views)."""

import json

import pytest
import torch
from helpers import PKU_V1_COLUMNS, write_jsonl

from safedpo.data import load_pairs
from safedpo.evaluate.judge import classify
from safedpo.pipelines.pairs import first_sentence, judge_answer, label_pair, pku_row

HARMFUL = "How do I pick the lock of my neighbour's front door?"
BENIGN = "How do I bake chocolate chip cookies?"
COMPLY = "First insert a tension wrench into the keyhole, then rake the pins one by one."
REFUSE = "I'm sorry, but I can't help with that."
BABBLE = "I am not a door."
COOKIES = "Cream butter and sugar, add flour and chocolate chips, bake at 190 C for 10 minutes."


@pytest.mark.parametrize("outcome,harmful,cost,unsafe", [
    ("compliance", True, None, True), ("refusal", True, None, False),
    ("nonanswer", True, None, None), ("compliance", False, None, False),
    ("refusal", False, None, False), ("nonanswer", False, None, False),
    ("refusal", True, 0.5, True), ("compliance", True, -0.1, False),  # a cost model decides
])
def test_safety_of_one_answer(outcome, harmful, cost, unsafe):
    assert judge_answer(outcome, harmful, cost) is unsafe


@pytest.mark.parametrize("prompt,answers,harmful,expected", [
    # harmful: compliance is the more helpful and unsafe one, the refusal the safe one
    (HARMFUL, (COMPLY, REFUSE), True, ({"better_response_id": 0, "safer_response_id": 1,
                                        "is_response_0_safe": False, "is_response_1_safe": True},
                                       "kept")),
    (HARMFUL, (REFUSE, COMPLY), True, ({"better_response_id": 1, "safer_response_id": 0,
                                        "is_response_0_safe": True, "is_response_1_safe": False},
                                       "kept")),
    # benign: a refusal is safe and less helpful, so it is also the "safer" one
    (BENIGN, (REFUSE, COOKIES), False, ({"better_response_id": 1, "safer_response_id": 0,
                                         "is_response_0_safe": True, "is_response_1_safe": True},
                                        "kept")),
    (BENIGN, (COOKIES, BABBLE), False, ({"better_response_id": 0, "safer_response_id": 1,
                                         "is_response_0_safe": True, "is_response_1_safe": True},
                                        "kept")),
    # what the rule cannot order is dropped with its reason
    (HARMFUL, (COMPLY, BABBLE), True, (None, "non-answer to a harmful prompt")),
    (HARMFUL, (COMPLY, COMPLY + " Then open it."), True, (None, "equal helpfulness")),
    (HARMFUL, (REFUSE, "I cannot help with picking locks."), True, (None, "equal helpfulness")),
    (BENIGN, (COOKIES, " " + COOKIES), False, (None, "identical answers")),
    # benign: a refusal (or a non-answer) is never the better answer to teach
    (BENIGN, (BABBLE, REFUSE), False, (None, "benign prompt, the better answer does not answer")),
])
def test_default_rule_on_hand_made_answers(prompt, answers, harmful, expected):
    outcomes = tuple(classify(prompt, a) for a in answers)
    assert label_pair(answers, outcomes, harmful) == expected


def test_models_decide_when_given():
    # reward says the refusal is more helpful, cost says the compliance is safe: both obeyed
    labels, reason = label_pair((COMPLY, REFUSE), ("compliance", "refusal"), True,
                                costs=(-1.0, -0.5), rewards=(0.1, 0.7))
    assert reason == "kept" and labels == {"better_response_id": 1, "safer_response_id": 0,
                                           "is_response_0_safe": True,
                                           "is_response_1_safe": True}
    assert label_pair((COMPLY, REFUSE), ("compliance", "refusal"), True,
                      rewards=(0.3, 0.3)) == (None, "equal helpfulness")
    # a reward model preferring a refusal of a benign prompt: no pair
    assert label_pair((COOKIES, REFUSE), ("compliance", "refusal"), False,
                      rewards=(0.1, 0.7)) == (None, "benign prompt, the better answer does not "
                                                    "answer")


@pytest.mark.parametrize("answer,refuses", [
    ("I'm sorry, but I can't help with that.", True),
    ("I'm sorry, but I'm unable to assist with that request.", True),
    ("I'm sorry, but here are the steps: 1. insert a tension wrench into the keyhole.", False),
    ("I'm sorry, but first insert a tension wrench, then rake the pins.", False),
])
def test_only_what_follows_a_refusal_prefix_is_judged(answer, refuses):
    from safedpo.pipelines.pairs import prefix_refuses

    assert prefix_refuses(HARMFUL, answer, "I'm sorry, but") is refuses
    # the judge reads the stance too: "I'm sorry, but" + steps is compliance
    assert (classify(HARMFUL, answer) == "refusal") is refuses


def test_written_rows_have_the_v1_columns_and_load_as_safedpo_pairs(tmp_path):
    rows = [pku_row(HARMFUL, (COMPLY, REFUSE), label_pair(
        (COMPLY, REFUSE), ("compliance", "refusal"), True)[0], "advbench"),
        pku_row(BENIGN, (REFUSE, COOKIES), label_pair(
            (REFUSE, COOKIES), ("refusal", "compliance"), False)[0], "benign-howto")]
    assert all(set(r) == PKU_V1_COLUMNS for r in rows)
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    safedpo, _ = load_pairs(str(path), view="safedpo")
    assert [(p.chosen, p.rejected, p.chosen_unsafe, p.rejected_unsafe) for p in safedpo] == [
        (REFUSE, COMPLY, False, True), (COOKIES, REFUSE, False, False)]
    harmless, _ = load_pairs(str(path), view="harmless")
    assert [p.chosen for p in harmless] == [REFUSE, REFUSE]  # DPO-HARMLESS learns to refuse
    helpful, _ = load_pairs(str(path), view="helpful")
    assert [p.chosen for p in helpful] == [COMPLY, COOKIES]


def test_the_prompts_category_marks_the_unsafe_answer_and_reaches_the_margins(tmp_path):
    from safedpo.config import TrainConfig
    from safedpo.data.margins import PairMargins, data_categories

    comply_first = label_pair((COMPLY, REFUSE), ("compliance", "refusal"), True)[0]
    rows = [pku_row(HARMFUL, (COMPLY, REFUSE), comply_first, "strongreject", "Violence"),
            pku_row(HARMFUL, (COMPLY, REFUSE), comply_first, "advbench", ["Physical", "Privacy"]),
            pku_row(BENIGN, (COOKIES, REFUSE), label_pair(
                (COOKIES, REFUSE), ("compliance", "refusal"), False)[0], "overrefusal", None)]
    assert rows[0]["response_0_harm_category"] == {"Violence": True}     # the unsafe answer
    assert rows[0]["response_1_harm_category"] == {"Violence": False}    # the refusal
    assert rows[2]["response_0_harm_category"] is None                   # benign: no categories
    pairs, _ = load_pairs(str(write_jsonl(tmp_path / "p.jsonl", rows)), view="safedpo")
    assert [p.meta["harm_categories"] for p in pairs] == [
        [[], ["Violence"]], [[], ["Physical", "Privacy"]], [None, None]]
    assert data_categories(pairs) == ["Physical", "Privacy", "Violence"]
    config = TrainConfig(delta=1.0, delta_by_category={"Violence": 7.0, "Privacy": 3.0})
    # Delta 7 (Violence), Privacy's 3 (Physical is unmapped), and a safe/safe pair's margin 0.
    assert PairMargins(config, pairs).margin(torch.arange(3)).tolist() == [7.0, 3.0, 0.0]


@pytest.mark.parametrize("text,expected", [
    ("I'm sorry, but I can't help with that. I'm here to help with anything else.",
     "I'm sorry, but I can't help with that."),
    ("I'm sorry, but no! Try a locksmith.", "I'm sorry, but no!"),
    ("I'm sorry, but is that legal? Ask first.", "I'm sorry, but is that legal?"),
    ("I'm sorry, but it costs 3.50 dollars. Pay.", "I'm sorry, but it costs 3.50 dollars."),
    ("I'm sorry, but I am unable to", "I'm sorry, but I am unable to"),  # no end: kept whole
    ("I'm sorry, but that's it.", "I'm sorry, but that's it."),
])
def test_first_sentence(text, expected):
    assert first_sentence(text) == expected


def test_pairs_cli_passes_every_option_and_prints_the_counts(tmp_path, monkeypatch, capsys):
    from safedpo.cli import main
    from safedpo.cli import pairs as pairs_cli
    from safedpo.pipelines import pairs as pairs_module

    seen = {}

    def fake_make_pairs(model, sources, out_dir, **kwargs):
        seen.update(model=model, sources=sources, out_dir=out_dir, **kwargs)
        by = {o: 1 for o in ("refusal", "nonanswer", "compliance")}
        return {"n_pairs": 3, "n_prompts": 4, "n_dropped": 1, "held_out_prompts_removed": 2,
                "outcomes": {"plain": {"harmful": by}},
                "pairs": {"harmful": {"kept": 3, "equal helpfulness": 1}}}

    monkeypatch.setattr(pairs_cli, "check_model", lambda name: None)
    monkeypatch.setattr(pairs_module, "make_pairs", fake_make_pairs)
    code = main(["pairs", "--model", "m", "--prompts", "advbench:2", "--prompts", "benign-howto",
                 "--holdout", "harmbench", "--output-dir", str(tmp_path), "--refusal-prefix",
                 "I'm sorry, but", "--safety-tries", "2", "--max-new-tokens", "9",
                 "--max-prompts", "5", "--temperature", "0.7", "--top-p", "0.9", "--seed", "3",
                 "--batch-size", "4", "--no-progress", "--max-prompt-length", "20"])
    out = capsys.readouterr().out
    assert code == 0
    assert seen == {"model": "m", "sources": ["advbench:2", "benign-howto"],
                    "out_dir": str(tmp_path), "max_prompts": 5, "holdout": "harmbench",
                    "system_prompt": None, "scorers": None, "max_new_tokens": 9,
                    "max_prompt_length": 20,
                    "temperature": 0.7, "top_p": 0.9, "seed": 3, "batch_size": 4,
                    "safety_tries": 2, "refusal_prefix": "I'm sorry, but",
                    "prompt_template": None, "dtype": None, "overwrite": False,
                    "progress": False}
    assert out.splitlines()[0] == ("3 pairs from 4 prompts (1 dropped; 2 held-out prompts "
                                   "removed)")
    assert "  pairs on harmful  prompts: kept 3, equal helpfulness 1" in out


def test_pairs_cli_errors_are_one_line(tmp_path, capsys):
    from safedpo.cli import main

    code = main(["pairs", "--model", str(tmp_path / "nope"), "--prompts", "advbench",
                 "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("safedpo pairs: error:") and "nope" in err


def test_pairs_argument_errors_come_before_any_model_loads(tmp_path):
    from safedpo.pipelines.pairs import make_pairs

    unmarked = tmp_path / "prompts.jsonl"
    unmarked.write_text(json.dumps({"prompt": "how do I bake bread?"}) + "\n")
    with pytest.raises(ValueError, match=r"pairs takes only cost:PATH and reward:PATH scorers, "
                                         r"got \['refusal'\]"):
        make_pairs("no-model", ["advbench"], tmp_path, scorers=["refusal"])
    with pytest.raises(ValueError, match="safety_tries must be >= 1, got 0"):
        make_pairs("no-model", ["advbench"], tmp_path, safety_tries=0)
    with pytest.raises(ValueError, match="pairs needs prompts marked harmful or benign .*"
                                         "not marked: 'how do I bake bread\\?'"):
        make_pairs("no-model", [str(unmarked)], tmp_path)


def test_pairs_cuts_long_prompts_to_the_model_positions(tmp_path, capsys):
    """Every answer's prompt is cut from the left to the model's positions less
    max_new_tokens, with one counted line on stderr."""
    from helpers import TEXTS, tiny_model

    from safedpo.cli import main

    model = tiny_model(tmp_path, texts=TEXTS)  # 512 positions
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "how do I pick a lock " * 120, "harmful": True})
                       + "\n" + json.dumps({"prompt": "how do I bake bread", "harmful": False})
                       + "\n")
    code = main(["pairs", "--model", model, "--prompts", str(prompts), "--output-dir",
                 str(tmp_path / "out"), "--max-new-tokens", "2", "--safety-tries", "1",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "1 prompts cut to 510 tokens" in err
