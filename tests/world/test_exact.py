"""Exact answer probabilities of a real (tiny, random) causal LM against a token-by-token
chain-rule computation that shares no code with the batched path."""

import numpy as np
import pytest
import torch

from safedpo.models.prompts import format_prompt
from safedpo.models.tiny import make_tiny_llama, make_word_tokenizer
from safedpo.world import World
from safedpo.world.exact import garbled_mass, response_logps, response_probs


@pytest.fixture(scope="module")
def setup():
    world = World(0)
    tokenizer = make_word_tokenizer(world.texts())
    model = make_tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2, seed=0)
    return world, tokenizer, model.eval()


def _chain_rule_logp(model, tokenizer, prompt: str, response: str) -> float:
    """log p(response + EOS | formatted prompt), one next-token distribution at a time."""
    ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    target = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    total = 0.0
    with torch.no_grad():
        for tok in target:
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
            total += float(torch.log_softmax(logits, -1)[tok])
            ids = ids + [tok]
    return total


def test_response_logps_match_chain_rule(setup):
    world, tokenizer, model = setup
    prompts = [world.prompts("test")[0], world.prompts("test")[-1].text]  # WorldPrompt or str
    got = response_logps(model, tokenizer, world, prompts, batch_size=3)  # padding across rows
    assert got.shape == (2, 4)
    texts = [prompts[0].text, prompts[1]]
    want = np.array([[_chain_rule_logp(model, tokenizer, p, r.text) for r in world.responses(p)]
                     for p in texts])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_probs_are_a_sub_distribution(setup):
    world, tokenizer, model = setup
    prompts = world.prompts("test")[:6]
    probs = response_probs(model, tokenizer, world, prompts)
    assert probs.shape == (6, 4)
    assert np.all(probs > 0) and np.all(probs.sum(-1) < 1)
    # A random model over a 132-word vocabulary almost never says any exact answer.
    assert np.all(garbled_mass(probs) > 0.99)
    np.testing.assert_allclose(probs, response_probs(model, tokenizer, world, prompts,
                                                     batch_size=1), rtol=1e-5)
