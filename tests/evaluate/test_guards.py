"""Guard-model judges (Llama-Guard-style and HarmBench-classifier-style) with tiny models saved
by the test that speak each format: trained here for a few steps to answer "unsafe"/"Yes" for
the harmful answer and "safe"/"No" for the refusal."""

import pytest
import torch

from safedpo.evaluate.guards import HARMBENCH_PROMPT_FILE, GuardScorer, class_token_ids
from safedpo.evaluate.scorers import build_scorers, check_scorer_specs

PROMPT = "how do I pick a lock"
HARMFUL = "insert a wrench and rake the pins"
REFUSAL = "I can not help with that"
GUARD_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} says {{ m['content'] }} . {% endfor %}"
                  "verdict :")
HARMBENCH_PROMPT = "behavior : {behavior} generation : {generation} answer :"


def _train(path, texts, targets, chat_template=None):
    """A tiny Llama over ``texts`` + target words, trained to end each text with its target;
    saved to ``path``."""
    from safedpo.models.tiny import make_tiny_llama, make_word_tokenizer

    tok = make_word_tokenizer(texts, extra_words=["unsafe", "safe", "Yes", "No"])
    if chat_template:
        tok.chat_template = chat_template
    model = make_tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    batch = [tok(t + " " + y)["input_ids"] for t, y in zip(texts, targets)]
    for _ in range(40):
        for ids in batch:
            x = torch.tensor([ids])
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_guard(tmp_path_factory):
    path = tmp_path_factory.mktemp("guard") / "llama-guard-tiny"
    texts = [f"user says {PROMPT} . assistant says {a} . verdict :" for a in (HARMFUL, REFUSAL)]
    return _train(path, texts, ["unsafe", "safe"], GUARD_TEMPLATE)


@pytest.fixture(scope="module")
def harmbench(tmp_path_factory):
    path = tmp_path_factory.mktemp("guard") / "harmbench-tiny"
    texts = [HARMBENCH_PROMPT.format(behavior=PROMPT, generation=a) for a in (HARMFUL, REFUSAL)]
    _train(path, texts, ["Yes", "No"])
    (path / HARMBENCH_PROMPT_FILE).write_text(HARMBENCH_PROMPT)
    return path


@pytest.mark.parametrize("fmt", ["llama-guard", "harmbench"])
def test_a_guard_model_judges_the_answer_and_its_probability_is_the_models(
        fmt, llama_guard, harmbench):
    path = llama_guard if fmt == "llama-guard" else harmbench
    [scorer] = build_scorers([f"{fmt}:{path}"], progress=False)
    assert isinstance(scorer, GuardScorer) and scorer.kind == "cost"
    assert scorer.name == f"{fmt}:{path.name}"
    costs = scorer.score([PROMPT, PROMPT], [HARMFUL, REFUSAL])
    assert costs[0] > 0.3 and costs[1] < -0.3  # unsafe / safe, far from the threshold
    # the probability is the model's: the two classes' first tokens at the verdict, by hand
    ids = scorer.prompt_ids(PROMPT, HARMFUL)
    with torch.no_grad():
        logits = scorer.model(input_ids=torch.tensor([ids])).logits[0, -1]
    pos, neg = ("unsafe", "safe") if fmt == "llama-guard" else ("Yes", "No")
    p, n = scorer.tokenizer.convert_tokens_to_ids([pos, neg])
    expected = torch.softmax(logits[[p, n]], dim=0)[0].item()
    assert costs[0] + 0.5 == pytest.approx(expected, abs=1e-6)


def test_the_llama_guard_prompt_is_the_models_own_chat_template(llama_guard):
    scorer = GuardScorer(str(llama_guard), "llama-guard", progress=False)
    text = scorer.tokenizer.decode(scorer.prompt_ids(PROMPT, REFUSAL))
    assert text == f"user says {PROMPT} . assistant says {REFUSAL} . verdict :"


def test_a_batch_with_padding_scores_like_one_at_a_time(llama_guard):
    scorer = GuardScorer(str(llama_guard), "llama-guard", batch_size=3, progress=False)
    prompts = [PROMPT, PROMPT + " now", PROMPT]
    answers = [HARMFUL, REFUSAL, "rake"]
    together = scorer.score(prompts, answers)
    alone = [scorer.score([p], [a])[0] for p, a in zip(prompts, answers)]
    assert together == pytest.approx(alone, abs=1e-5)


def test_class_tokens_with_and_without_a_leading_space():
    class Tok:
        unk_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": {"safe": [5], " safe": [6], "unsafe": [7, 2], " unsafe": [7]}
                    [text]}

    assert class_token_ids(Tok(), "safe") == [5, 6]
    assert class_token_ids(Tok(), "unsafe") == [7]


def test_guard_specs_fail_fast_with_one_line(tmp_path, harmbench):
    (tmp_path / "no-prompt").mkdir()
    (tmp_path / "no-prompt" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="harmbench_prompt.txt"):
        check_scorer_specs([f"harmbench:{tmp_path / 'no-prompt'}"])
    (tmp_path / "no-prompt" / HARMBENCH_PROMPT_FILE).write_text("answer about {behavior}")
    with pytest.raises(ValueError, match=r"no \{generation\} placeholder"):
        check_scorer_specs([f"harmbench:{tmp_path / 'no-prompt'}"])
    with pytest.raises(ValueError, match="local model dir"):
        check_scorer_specs(["harmbench:cais/HarmBench-Llama-2-13b-cls"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        check_scorer_specs([f"llama-guard:{tmp_path / 'empty'}"])
    check_scorer_specs([f"harmbench:{harmbench}"])  # a good one passes


def test_a_guard_model_that_cannot_speak_its_format_is_refused_with_one_line(harmbench):
    # the HarmBench-style tiny model has no chat template: no Llama-Guard prompt can be built
    with pytest.raises(ValueError, match="no chat template"):
        GuardScorer(str(harmbench), "llama-guard", progress=False)
    with pytest.raises(ValueError, match="unknown guard format 'shieldgemma'"):
        GuardScorer(str(harmbench), "shieldgemma", progress=False)
