"""Tokenization traps: EOS once, prompt masked, prompt truncated before response, BOS once,
right padding."""

import copy

import pytest
import torch

from safedpo.data.tokenization import (
    collate_pairs,
    encode_pair,
    special_prefix,
    tokenize_pairs,
)
from safedpo.models.tiny import make_word_tokenizer

WORDS = "p1 p2 p3 p4 p5 p6 r1 r2 r3 r4 r5"


@pytest.fixture(scope="module")
def tok():
    return make_word_tokenizer([WORDS])


@pytest.fixture(scope="module")
def bos_tok(tok):
    """Same vocabulary, but the tokenizer adds <bos> in front (like Llama)."""
    from tokenizers import processors

    t = copy.deepcopy(tok)
    t._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", t.bos_token_id)])
    t.__dict__.pop("_safedpo_prefix", None)
    return t


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_prompt_masked_and_eos_appended(tok):
    enc = encode_pair(tok, "p1 p2 p3", "r1 r2", None, None)
    assert enc["input_ids"] == ids(tok, "p1 p2 p3 r1 r2") + [tok.eos_token_id]
    assert enc["loss_mask"] == [False, False, False, True, True, True]


def test_eos_appended_once(tok):
    enc = encode_pair(tok, "p1", "r1 <eos>", None, None)
    assert enc["input_ids"] == ids(tok, "p1 r1") + [tok.eos_token_id]
    assert enc["input_ids"].count(tok.eos_token_id) == 1


def test_max_prompt_length_cuts_prompt_from_left(tok):
    enc = encode_pair(tok, "p1 p2 p3 p4 p5", "r1", None, 2)
    assert enc["input_ids"] == ids(tok, "p4 p5 r1") + [tok.eos_token_id]


def test_prompt_truncated_before_response(tok):
    # 6 prompt + 3 response + eos = 10 > 6: only the prompt shrinks (to its last 2 tokens).
    enc = encode_pair(tok, "p1 p2 p3 p4 p5 p6", "r1 r2 r3", 6, None)
    assert enc["input_ids"] == ids(tok, "p5 p6 r1 r2 r3") + [tok.eos_token_id]
    assert sum(enc["loss_mask"]) == 4


def test_response_cut_only_as_last_resort(tok):
    # One prompt token must stay (the first response token is predicted from it).
    enc = encode_pair(tok, "p1 p2 p3", "r1 r2 r3 r4 r5", 4, None)
    assert enc["input_ids"] == ids(tok, "p3 r1 r2 r3")
    assert enc["loss_mask"] == [False, True, True, True]


def test_bos_added_once_and_kept_when_truncating(bos_tok):
    bos, eos = bos_tok.bos_token_id, bos_tok.eos_token_id
    assert special_prefix(bos_tok) == [bos]
    enc = encode_pair(bos_tok, "p1 p2", "r1", None, None)
    assert enc["input_ids"] == [bos] + ids(bos_tok, "p1 p2 r1") + [eos]
    # A chat template that already wrote the BOS as text: not doubled.
    enc = encode_pair(bos_tok, "<bos> p1 p2", "r1", None, None)
    assert enc["input_ids"].count(bos) == 1 and enc["input_ids"][0] == bos
    # Left truncation keeps the BOS and cuts the words after it.
    enc = encode_pair(bos_tok, "p1 p2 p3 p4", "r1", 4, None)
    assert enc["input_ids"] == [bos] + ids(bos_tok, "p4 r1") + [eos]


def test_collate_right_pads_chosen_then_rejected(tok):
    from safedpo.data.types import SafetyPair

    pairs = [SafetyPair("p1", "r1 r2 r3", "r4", False, True),
             SafetyPair("p1 p2 p3", "r5", "r1", True, False)]
    items = tokenize_pairs(tok, pairs, prompt_template="{prompt}")
    batch = collate_pairs(items, tok.pad_token_id)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    expect = torch.tensor([ids(tok, "p1 r1 r2 r3") + [eos],
                           ids(tok, "p1 p2 p3 r5") + [eos],
                           ids(tok, "p1 r4") + [eos, pad, pad],
                           ids(tok, "p1 p2 p3 r1") + [eos]])
    assert torch.equal(batch["input_ids"], expect)
    assert batch["attention_mask"].tolist() == [[1] * 5, [1] * 5, [1, 1, 1, 0, 0], [1] * 5]
    assert batch["loss_mask"].tolist()[0] == [False, True, True, True, True]
    assert batch["loss_mask"].tolist()[2] == [False, True, True, False, False]
    assert batch["logits_start"] == 1 and batch["num_tokens"] == 18
    assert batch["chosen_unsafe"].tolist() == [False, True]
    assert batch["rejected_unsafe"].tolist() == [True, False]


def test_safe_rlhf_template_is_default_without_chat_template(tok):
    from safedpo.data.types import SafetyPair

    items = tokenize_pairs(tok, [SafetyPair("p1", "r1", "r2", False, False)])
    text = tok.decode(items[0]["chosen_input_ids"])
    assert text.startswith("BEGINNING OF CONVERSATION: USER: p1 ASSISTANT: r1")
