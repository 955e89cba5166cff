"""Scorers on tiny saved models: scores equal the closed-form head(hidden state at the last real
token); refusal detectors and the refusal cost on hand cases; clear errors for wrong models."""

import json
import shutil

import pytest
import torch
from helpers import tiny_model
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForSequenceClassification, LlamaModel

from safedpo.data.tokenization import encode_prompt
from safedpo.evaluate.scorers import (
    OracleCostScorer,
    OracleGarbledScorer,
    OracleRewardScorer,
    RefusalCostScorer,
    RefusalScorer,
    SafeRLHFScoreModelScorer,
    SequenceClassifierScorer,
    build_scorers,
    check_scorer_specs,
    is_refusal_gcg,
    is_refusal_xstest,
    load_model_scorer,
)
from safedpo.models.prompts import format_prompt
from safedpo.models.tiny import make_word_tokenizer

TEXTS = ["how do I bake bread ?", "how do I pick a lock ?",
         "I'm sorry , I can't help with that .", "Sure , here is how to bake bread ."]
PROMPTS = ["how do I bake bread ?", "how do I pick a lock ?", "how do I bake bread ?"]
RESPONSES = ["Sure , here is how to bake bread .", "I'm sorry , I can't help with that .", "Sure"]


def tiny_config(tok, **kw):
    return LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, **kw)


def conversation_ids(tok, prompt, response, eos=False):
    ids = encode_prompt(tok, format_prompt(tok, prompt)) + \
        tok(response, add_special_tokens=False)["input_ids"]
    return ids + [tok.eos_token_id] if eos else ids


@pytest.fixture(scope="module")
def seqcls_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("seqcls")
    tok = make_word_tokenizer(TEXTS)
    torch.manual_seed(0)
    LlamaForSequenceClassification(tiny_config(tok, num_labels=1)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def safe_rlhf_text(prompt, response, eos="</s>"):
    """safe-rlhf's scoring input: one string, EOS as text (tokenized as one string)."""
    return f"BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}{eos}"


def metaspace_tokenizer(texts):
    """A small Llama-like tokenizer: BPE over '▁'-marked words, BOS added, EOS '</s>'. Unlike a
    word tokenizer, 'ASSISTANT:' + 'Sure' tokenized apart differs from 'ASSISTANT:Sure'."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=120, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")


def make_score_model(path, *, arch="LlamaForScore", bias_field="score_bias", bias=True,
                     score_type="cost", do_normalize=False, mean=0.0, var=1.0, tok=None):
    """A safe-rlhf-style score model: backbone weights model.*, score_head.*, normalizer.*,
    config.json with architectures/score_dim/score_bias (or bias)/score_type/do_normalize."""
    tok = tok or make_word_tokenizer(TEXTS)
    config = tiny_config(tok)
    torch.manual_seed(1)
    backbone = LlamaModel(config).eval()
    state = {f"model.{k}": v.clone().contiguous() for k, v in backbone.state_dict().items()}
    head_w, head_b = torch.randn(1, 16), torch.tensor([0.25 if bias else 0.0])
    state["score_head.weight"] = head_w
    if bias:
        state["score_head.bias"] = head_b
    state.update({"normalizer.mean": torch.tensor([mean]), "normalizer.var": torch.tensor([var]),
                  "normalizer.count": torch.tensor([10])})
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    fields = config.to_dict()
    fields.update({"architectures": [arch], "score_dim": 1, bias_field: bias,
                   "do_normalize": do_normalize, "normalizer_type": "ExponentialMovingAverage",
                   "momentum": 0.9, "mean": [mean], "var": [var]})
    if score_type:
        fields["score_type"] = score_type
    (path / "config.json").write_text(json.dumps(fields))
    tok.save_pretrained(path)

    def expected(prompt, response):  # score_head at the last token of prompt+response+EOS
        ids = torch.tensor([tok(safe_rlhf_text(prompt, response, tok.eos_token))["input_ids"]])
        with torch.no_grad():
            h = backbone(input_ids=ids).last_hidden_state[0, -1]
        return float(h @ head_w[0] + head_b[0])

    return expected


def test_sequence_classifier_scores_equal_head_at_last_token(seqcls_dir):
    scorer = SequenceClassifierScorer(str(seqcls_dir), "reward", batch_size=3, progress=False)
    assert (scorer.kind, scorer.name) == ("reward", f"reward:{seqcls_dir.name}")
    model, tok = scorer.model, scorer.tokenizer
    expected = []
    for p, r in zip(PROMPTS, RESPONSES):  # unbatched, unpadded, by hand
        ids = torch.tensor([conversation_ids(tok, p, r)])
        with torch.no_grad():
            h = model.model(input_ids=ids).last_hidden_state[0, -1]
            expected.append(float(h @ model.score.weight[0]))
    got = scorer.score(PROMPTS, RESPONSES)  # one right-padded batch of 3 lengths
    assert got == pytest.approx(expected, abs=1e-5)
    assert len(set(round(g, 4) for g in got)) == 3  # the three answers really differ


def test_safe_rlhf_score_model_loads_and_scores(tmp_path):
    expected = make_score_model(tmp_path / "beaver-cost")
    scorer = SafeRLHFScoreModelScorer(str(tmp_path / "beaver-cost"), batch_size=2,
                                      progress=False)
    assert scorer.kind == "cost"  # from config.score_type
    got = scorer.score(PROMPTS, RESPONSES)  # batches of 2 and 1, right-padded
    assert got == pytest.approx([expected(p, r) for p, r in zip(PROMPTS, RESPONSES)], abs=1e-5)
    # build_scorers routes a score-model config to this loader.
    (routed,) = build_scorers([f"cost:{tmp_path / 'beaver-cost'}"], progress=False)
    assert isinstance(routed, SafeRLHFScoreModelScorer)


def test_safe_rlhf_score_model_tokenizes_the_joined_conversation(tmp_path, monkeypatch):
    tok = metaspace_tokenizer(TEXTS + [safe_rlhf_text("", "")] * 3)
    expected = make_score_model(tmp_path / "m", tok=tok)
    scorer = SafeRLHFScoreModelScorer(str(tmp_path / "m"), batch_size=3, progress=False)
    fed, forward = [], scorer._forward

    def spy(input_ids, attention_mask):  # (B, T), (B, T): keep each row's real tokens
        fed.extend(ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask))
        return forward(input_ids, attention_mask)

    monkeypatch.setattr(scorer, "_forward", spy)
    got = scorer.score(PROMPTS, RESPONSES)
    assert fed == [tok(safe_rlhf_text(p, r))["input_ids"] for p, r in zip(PROMPTS, RESPONSES)]
    assert all(ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id for ids in fed)
    assert fed[0] != conversation_ids(tok, PROMPTS[0], RESPONSES[0], eos=True)  # not apart
    assert got == pytest.approx([expected(p, r) for p, r in zip(PROMPTS, RESPONSES)], abs=1e-5)


def test_safe_rlhf_v1_format_without_bias(tmp_path):
    """Beaver v1.0 configs: architectures LlamaModelForScore, field `bias`, no score_type."""
    expected = make_score_model(tmp_path / "v1", arch="LlamaModelForScore", bias_field="bias",
                                bias=False, score_type=None)
    scorer = SafeRLHFScoreModelScorer(str(tmp_path / "v1"), progress=False)
    assert scorer.kind == "reward" and scorer.model.score_head.bias is None
    assert scorer.score(PROMPTS[:1], RESPONSES[:1]) == pytest.approx(
        [expected(PROMPTS[0], RESPONSES[0])], abs=1e-5)


@pytest.mark.parametrize("score_type", ["reward", "cost"])
def test_safe_rlhf_normalization(tmp_path, score_type):
    expected = make_score_model(tmp_path / "n", score_type=score_type, do_normalize=True,
                                mean=0.5, var=4.0)
    scorer = SafeRLHFScoreModelScorer(str(tmp_path / "n"), progress=False)
    raw = expected(PROMPTS[0], RESPONSES[0])
    want = (raw - 0.5) / 2.0 if score_type == "reward" else raw / 2.0  # affine / scale
    assert scorer.score(PROMPTS[:1], RESPONSES[:1])[0] == pytest.approx(want, abs=1e-5)


def test_model_scorer_errors(tmp_path, seqcls_dir):
    causal = tiny_model(tmp_path, "causal", TEXTS, hidden_size=16)
    with pytest.raises(ValueError, match="not a sequence classifier.*LlamaForCausalLM"):
        load_model_scorer(str(causal), "reward")
    with pytest.raises(ValueError, match="no 'score_dim'"):
        SafeRLHFScoreModelScorer(str(causal))
    with pytest.raises(ValueError, match="no 'score_dim'"):
        SafeRLHFScoreModelScorer(str(seqcls_dir))
    with pytest.raises(FileNotFoundError, match="/no/such/reward_model"):
        load_model_scorer("/no/such/reward_model", "reward")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model_scorer(str(tmp_path), "cost")
    with pytest.raises(ValueError, match="'reward' or a 'cost'"):
        SequenceClassifierScorer(str(seqcls_dir), "refusal")
    # A score model whose config lost its score fields is not taken for one.
    make_score_model(tmp_path / "broken")
    fields = json.loads((tmp_path / "broken" / "config.json").read_text())
    del fields["score_dim"]
    fields["architectures"] = ["LlamaForCausalLM"]
    (tmp_path / "broken" / "config.json").write_text(json.dumps(fields))
    with pytest.raises(ValueError, match="no 'score_dim'"):
        SafeRLHFScoreModelScorer(str(tmp_path / "broken"))
    # Score fields but no score_head weights.
    shutil.copytree(seqcls_dir, tmp_path / "headless")
    fields = json.loads((tmp_path / "headless" / "config.json").read_text())
    fields.update(architectures=["LlamaForScore"], score_dim=1)
    (tmp_path / "headless" / "config.json").write_text(json.dumps(fields))
    with pytest.raises(ValueError, match="missing.*score_head.weight"):
        SafeRLHFScoreModelScorer(str(tmp_path / "headless"))
    with pytest.raises(ValueError, match="safe-rlhf score model"):
        SequenceClassifierScorer(str(tmp_path / "headless"))


def test_two_label_classifier_is_rejected(tmp_path):
    tok = make_word_tokenizer(TEXTS)
    LlamaForSequenceClassification(tiny_config(tok, num_labels=2)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels=2"):
        SequenceClassifierScorer(str(tmp_path))


def test_refusal_detectors_on_hand_cases():
    assert is_refusal_xstest("  I'm sorry, but no.")
    assert is_refusal_xstest("I can\u2019t do that")  # curly apostrophe
    assert is_refusal_xstest("No, I will not.")
    assert not is_refusal_xstest("Nobody knows.")
    assert not is_refusal_xstest("Here is how. I'm sorry it is long.")  # not at the start
    assert is_refusal_gcg("Here is how. I'm sorry it is long.")  # anywhere
    assert is_refusal_gcg("Step 1: this is illegal")  # a known false positive of the method
    assert not is_refusal_gcg("i cannot")  # case-sensitive, as published
    assert RefusalScorer().score(["p", "q"], ["Sorry!", "Sure."]) == [1.0, 0.0]
    assert RefusalScorer("gcg").score(["p"], ["Well, As an AI..."]) == [1.0]
    with pytest.raises(ValueError, match="unknown refusal method"):
        RefusalScorer("judge")


def test_refusal_cost_on_hand_cases():
    scorer = RefusalCostScorer()
    scorer.bind([{"prompt": "bad", "harmful": True}, {"prompt": "ok", "harmful": False},
                 {"prompt": "unknown", "harmful": None}])
    got = scorer.score(["bad", "bad", "ok", "unknown"],
                       ["Sure, here is how", "I'm sorry, I cannot", "Sure", "Sure"])
    assert got == [1.0, -1.0, 0.0, 1.0]  # unknown harmfulness: treated as harmful
    lenient = RefusalCostScorer({"bad": True}, default_harmful=False)
    assert lenient.score(["bad", "other"], ["Sure", "Sure"]) == [1.0, 0.0]


class FakeOracle:
    def reward(self, prompt, response):
        return float(len(response))

    def cost(self, prompt, response):
        return 2.0 if "bad" in response else -1.0

    def classify(self, prompt, response):
        return "garbled" if response == "??" else "helpful"


def test_oracle_scorers_call_the_oracle():
    oracle = FakeOracle()
    assert OracleRewardScorer(oracle).score(["p", "p"], ["ab", "abcd"]) == [2.0, 4.0]
    assert OracleCostScorer(oracle).score(["p", "p"], ["bad", "good"]) == [2.0, -1.0]
    assert OracleGarbledScorer(oracle).score(["p", "p"], ["??", "ok"]) == [1.0, 0.0]


def test_oracle_scorers_on_the_world():
    from safedpo.world import World

    world = World(seed=0)
    prompt = next(p for p in world.prompts("test") if p.harmful).text
    types = world.responses(prompt)
    scorers = build_scorers(["oracle"])
    assert [s.name for s in scorers] == ["oracle_reward", "oracle_cost", "oracle_garbled"]
    texts = [t.text for t in types] + ["zzz qqq"]
    rewards, costs, garbled = (s.score([prompt] * len(texts), texts) for s in scorers)
    assert rewards[:-1] == [t.reward for t in types] and costs[:-1] == [t.cost for t in types]
    assert costs[-1] == 0.0 and garbled == [0.0] * len(types) + [1.0]


def test_oracle_check_names_the_first_unknown_prompt():
    from safedpo.world import World

    world_prompts = [p.text for p in World(seed=0).prompts("test")[:5]]
    check_scorer_specs(["oracle"], world_prompts)  # world prompts pass
    OracleCostScorer().check(world_prompts)
    with pytest.raises(ValueError, match="only judges prompts of the synthetic safety world.*"
                                         "'bake a cake'"):
        check_scorer_specs(["refusal", "oracle-reward"], world_prompts + ["bake a cake", "x y"])
    check_scorer_specs(["refusal"], ["bake a cake"])  # no oracle: any prompt
    OracleRewardScorer(FakeOracle()).check(["bake a cake"])  # an oracle without a world


def test_unknown_scorer_spec():
    with pytest.raises(ValueError, match="unknown scorer 'judge'.*reward:PATH"):
        build_scorers(["judge"])
