"""sequence_logps against hand computations (a model whose logits we set) and against a naive
full log-softmax on a real tiny Llama; token_logps (a custom autograd function) against the
naive formula in value and gradient (float32, float64 gradcheck, bf16), and what it saves."""

import math
from types import SimpleNamespace

import pytest
import torch

from safedpo.logprobs import accepts_logits_to_keep, sequence_logps, token_logps

# Vocabulary of 3. Logits at position t (predicting token t+1), same for every row.
LOGITS = torch.tensor([[0.0, 1.0, 2.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]])


class FixedLogits(torch.nn.Module):
    """forward returns LOGITS for every row; optionally honours logits_to_keep."""

    def __init__(self, keep: bool):
        super().__init__()
        self.keep = keep
        self.calls = []

    def forward(self, input_ids, attention_mask=None, use_cache=None, **kw):
        if "logits_to_keep" in kw and not self.keep:
            raise TypeError("unexpected logits_to_keep")
        logits = LOGITS[: input_ids.shape[1]].expand(input_ids.shape[0], -1, -1)
        k = kw.get("logits_to_keep", 0)
        self.calls.append(k)
        return SimpleNamespace(logits=logits[:, -k:] if k else logits)


class KeepModel(FixedLogits):
    def forward(self, input_ids, attention_mask=None, use_cache=None, logits_to_keep=0):
        return super().forward(input_ids, attention_mask, use_cache, logits_to_keep=logits_to_keep)


def lsm(row, i):
    return row[i] - math.log(sum(math.exp(v) for v in row))


@pytest.mark.parametrize("model", [FixedLogits(keep=False), KeepModel(keep=True)],
                         ids=["full-logits", "logits_to_keep"])
def test_hand_computed_sum_and_mean(model):
    input_ids = torch.tensor([[0, 2, 0, 1], [1, 1, 2, 0]])
    attention_mask = torch.ones(2, 4, dtype=torch.long)
    loss_mask = torch.tensor([[False, False, True, True], [False, True, True, False]])
    # Row 0 targets: token 0 at position 2 (logits row 1), token 1 at position 3 (logits row 2).
    row0 = lsm([2.0, 0.0, 0.0], 0) + lsm([0.0, 0.0, 3.0], 1)
    # Row 1 targets: token 1 at position 1 (logits row 0), token 2 at position 2 (logits row 1).
    row1 = lsm([0.0, 1.0, 2.0], 1) + lsm([2.0, 0.0, 0.0], 2)
    got = sequence_logps(model, input_ids, attention_mask, loss_mask)
    assert got.tolist() == pytest.approx([row0, row1], abs=1e-6)
    got = sequence_logps(model, input_ids, attention_mask, loss_mask, average=True)
    assert got.tolist() == pytest.approx([row0 / 2, row1 / 2], abs=1e-6)


def test_logits_to_keep_skips_prompt_positions():
    model = KeepModel(keep=True)
    assert accepts_logits_to_keep(model)
    assert not accepts_logits_to_keep(FixedLogits(keep=False))
    input_ids = torch.zeros(1, 4, dtype=torch.long)
    loss_mask = torch.tensor([[False, False, True, True]])
    sequence_logps(model, input_ids, torch.ones_like(input_ids), loss_mask)
    assert model.calls == [3]  # positions 1, 2, 3: the last one is dropped after the call


def test_token_logps_equals_log_softmax():
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(1))
    want = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logps(logits, targets), want, atol=1e-6)


@pytest.fixture(scope="module")
def llama():
    from safedpo.models.tiny import make_tiny_llama, make_word_tokenizer

    tok = make_word_tokenizer(["a b c d e f g h"])
    return make_tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2).eval()


def test_tiny_llama_matches_naive_and_padding_does_not_matter(llama):
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, 12, (3, 9), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0  # right padding
    loss_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    loss_mask[0, 3:] = True
    loss_mask[1, 4:6] = True
    loss_mask[2, 5:] = True
    with torch.no_grad():
        got = sequence_logps(llama, input_ids, attention_mask, loss_mask)
        full = torch.log_softmax(llama(input_ids=input_ids, attention_mask=attention_mask)
                                 .logits.float(), -1)
        tok = full[:, :-1].gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        naive = (tok * loss_mask[:, 1:]).sum(-1)
        alone = sequence_logps(llama, input_ids[1:2, :6], attention_mask[1:2, :6],
                               loss_mask[1:2, :6])
    assert torch.allclose(got, naive, atol=1e-5)
    assert got[1].item() == pytest.approx(alone.item(), abs=1e-5)


# --- token_logps: the custom autograd function --------------------------------------------

def naive_token_logps(logits, targets):
    """The reference: a full float32 log-softmax, then the targets' entries."""
    return torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _inputs(b, k, v, dtype=torch.float32, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(b, k, v, generator=g, dtype=torch.float64)).to(dtype)
    targets = torch.randint(0, v, (b, k), generator=g)
    upstream = torch.randn(b, k, generator=g)
    return logits, targets, upstream


def _value_and_grad(fn, logits, targets, upstream, mask=None):
    x = logits.detach().clone().requires_grad_(True)
    out = fn(x, targets)
    if mask is not None:
        out = torch.where(mask, out, 0.0)
    (out * upstream.to(out.dtype)).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("shape", [(2, 5, 7), (3, 1, 11), (1, 1, 2), (4, 16, 300)],
                         ids=["small", "K=1", "one-token-V=2", "wider"])
def test_token_logps_float32_value_and_grad_equal_log_softmax(shape):
    logits, targets, upstream = _inputs(*shape)
    got, got_grad = _value_and_grad(token_logps, logits, targets, upstream)
    want, want_grad = _value_and_grad(naive_token_logps, logits, targets, upstream)
    assert got.dtype == torch.float32 and got.shape == shape[:2]
    assert got_grad.dtype == torch.float32 and got_grad.shape == shape
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    assert torch.allclose(got_grad, want_grad, atol=1e-6, rtol=0)


def test_token_logps_float32_on_a_sliced_view_like_sequence_logps():
    """sequence_logps passes logits[:, start-1:-1], a non-contiguous view."""
    full, _, _ = _inputs(3, 9, 13, seed=3)
    targets = torch.randint(0, 13, (3, 5), generator=torch.Generator().manual_seed(4))
    upstream = torch.randn(3, 5, generator=torch.Generator().manual_seed(5))
    grads = []
    for fn in (token_logps, naive_token_logps):
        x = full.clone().requires_grad_(True)
        out = fn(x[:, 3:-1], targets)
        (out * upstream).sum().backward()
        grads.append((out.detach(), x.grad))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6, rtol=0)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6, rtol=0)
    assert grads[0][1][:, :3].abs().max() == 0 and grads[0][1][:, -1].abs().max() == 0


def test_token_logps_gradcheck_float64():
    logits, targets, _ = _inputs(2, 3, 5, dtype=torch.float64, seed=1)
    logits.requires_grad_(True)
    assert token_logps(logits, targets).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: token_logps(x, targets), (logits,))


def _with_extra(fn, x, targets, pos, extra_targets):
    """(in-row log-probs, extra log-probs) by ``fn``: token_logps with ``extra``, or the naive
    full log-softmax read twice."""
    if fn is token_logps:
        return token_logps(x, targets, extra=(pos, extra_targets))
    rows = x[torch.arange(len(pos)), pos]
    return naive_token_logps(x, targets), naive_token_logps(rows[:, None],
                                                            extra_targets[:, None])[:, 0]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_token_logps_extra_targets_value_and_grad(dtype, tol):
    """One more target per row at a given position (a shared row's first rejected token): the
    values and the one gradient of the whole logits equal a full log-softmax read at both
    targets, the extra rows' gradient added to the in-row one (row 0: the same position as
    an in-row target; row 2: the last position)."""
    logits, targets, upstream = _inputs(3, 6, 17, dtype=dtype, seed=7)
    pos, extra_targets = torch.tensor([0, 3, 5]), torch.tensor([4, 16, 0])
    extra_up = torch.tensor([0.7, -1.3, 2.0])
    got = []
    for fn in (token_logps, naive_token_logps):
        x = (logits if fn is token_logps else logits.float()).detach().clone().requires_grad_()
        a, b = _with_extra(fn, x, targets, pos, extra_targets)
        ((a * upstream).sum() + (b * extra_up).sum()).backward()
        got.append((a.detach(), b.detach(), x.grad.float()))
    for mine, want in zip(*got):
        assert torch.allclose(mine, want, atol=tol, rtol=0)
    # the extra targets change the gradient at their (row, position) only
    x = logits.detach().clone().requires_grad_()
    (token_logps(x, targets) * upstream).sum().backward()
    changed = (x.grad.float() - got[0][2]).abs().amax(-1) > 0
    assert changed.nonzero().tolist() == [[0, 0], [1, 3], [2, 5]]


def test_token_logps_extra_targets_gradcheck_float64_and_no_grad():
    logits, targets, _ = _inputs(2, 4, 5, dtype=torch.float64, seed=8)
    pos, extra_targets = torch.tensor([1, 1]), torch.tensor([2, 0])
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: token_logps(x, targets, extra=(pos, extra_targets)), (logits,))
    with torch.no_grad():
        a, b = token_logps(logits, targets, extra=(pos, extra_targets))
    want_a, want_b = _with_extra(naive_token_logps, logits.detach(), targets, pos, extra_targets)
    assert torch.allclose(a, want_a.double()) and torch.allclose(b, want_b.double())
    with pytest.raises(ValueError, match="extra targets need logits of shape"):
        token_logps(logits[0], targets[0], extra=(pos, extra_targets))


def test_token_logps_bf16_matches_float32_log_softmax_of_the_bf16_values():
    logits, targets, upstream = _inputs(3, 7, 257, dtype=torch.bfloat16, seed=2)
    got, got_grad = _value_and_grad(token_logps, logits, targets, upstream)
    # Reference: the same bf16 values, log-softmax and gradient in float32.
    want, want_grad = _value_and_grad(naive_token_logps, logits.float(), targets, upstream)
    assert got.dtype == torch.float32 and got_grad.dtype == torch.bfloat16
    # Values are computed in float32 from the bf16 logits: float32-exact.
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    # The gradient is rounded once to bf16 (8 significant bits).
    assert torch.allclose(got_grad.float(), want_grad, atol=1e-6, rtol=2 ** -8)


def test_token_logps_masked_positions_get_zero_gradient():
    logits, targets, upstream = _inputs(2, 6, 9, seed=6)
    mask = torch.tensor([[True, False, True, True, False, False], [False] * 6])
    got, got_grad = _value_and_grad(token_logps, logits, targets, upstream, mask)
    want, want_grad = _value_and_grad(naive_token_logps, logits, targets, upstream, mask)
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    assert torch.allclose(got_grad, want_grad, atol=1e-6, rtol=0)
    assert got_grad[~mask].abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("chunk", [1, 7, 24, 40, 200], ids=["row-per-chunk", "partial-rows",
                                                            "ragged-positions",
                                                            "whole-batch-row", "batch-rows"])
def test_token_logps_chunking_does_not_change_the_result(monkeypatch, chunk, dtype):
    import safedpo.logprobs as lp

    logits, targets, upstream = _inputs(3, 5, 8, dtype=dtype, seed=7)
    want, want_grad = _value_and_grad(naive_token_logps, logits.float(), targets, upstream)
    monkeypatch.setattr(lp, "_CHUNK_ELEMENTS", chunk)
    got, got_grad = _value_and_grad(token_logps, logits, targets, upstream)
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    tol = 1e-6 if dtype == torch.float32 else 2 ** -8
    assert torch.allclose(got_grad.float(), want_grad, atol=1e-6, rtol=tol)


def test_token_logps_other_ranks_and_no_grad():
    logits, targets, _ = _inputs(2, 4, 6, seed=8)
    want = naive_token_logps(logits, targets)
    assert torch.allclose(token_logps(logits[0], targets[0]), want[0], atol=1e-6)  # (K, V)
    four = token_logps(logits.reshape(1, 2, 4, 6), targets.reshape(1, 2, 4))
    assert four.shape == (1, 2, 4) and torch.allclose(four.reshape(2, 4), want, atol=1e-6)
    with torch.no_grad():
        out = token_logps(logits.requires_grad_(True), targets)
    assert out.grad_fn is None and torch.allclose(out, want, atol=1e-6)


def test_token_logps_under_cpu_autocast():
    g = torch.Generator().manual_seed(9)
    lin = torch.nn.Linear(16, 50)
    h = torch.randn(2, 4, 16, generator=g)
    targets = torch.randint(0, 50, (2, 4), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(h)
        got = token_logps(logits, targets)
    assert logits.dtype == torch.bfloat16 and got.dtype == torch.float32
    got.sum().backward()
    got_grad = lin.weight.grad.clone()
    lin.weight.grad = None
    naive_token_logps(lin(h).bfloat16(), targets).sum().backward()
    assert torch.allclose(got, naive_token_logps(logits.detach(), targets), atol=1e-5)
    assert torch.allclose(got_grad, lin.weight.grad, atol=0.05, rtol=0.05)


def _saved_bytes(fn):
    """[(dtype, shape, bytes)] of every tensor autograd saves while running fn()."""
    saved = []

    def pack(t):
        saved.append((t.dtype, tuple(t.shape), t.numel() * t.element_size()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return saved


def test_token_logps_saves_no_float32_copy_of_bf16_logits():
    """The audit's finding: a row-wise logsumexp(row.float()) under autograd saves every
    row's float32 upcast, B*K*V*4 bytes in all. Only the bf16 logits (by reference, no copy)
    and the int64 targets may be saved."""
    b, k, v = 4, 8, 512
    logits, targets, _ = _inputs(b, k, v, dtype=torch.bfloat16, seed=10)
    logits.requires_grad_(True)
    saved = _saved_bytes(lambda: token_logps(logits, targets).sum().backward())
    f32 = [s for s in saved if s[0] == torch.float32]
    assert not [s for s in f32 if s[1] == (b, k, v)]
    assert sum(s[2] for s in f32) < b * k * v * 4
    assert f32 == []
    assert sum(s[2] for s in saved) <= b * k * v * 2 + b * k * 8  # the logits, the targets
    with torch.no_grad():
        assert _saved_bytes(lambda: token_logps(logits, targets)) == []


def test_sequence_logps_gradient_matches_naive_on_tiny_llama(llama):
    """End to end through a model: parameter gradients equal those of the naive formula."""
    g = torch.Generator().manual_seed(11)
    input_ids = torch.randint(4, 12, (2, 8), generator=g)
    attention_mask = torch.ones_like(input_ids)
    loss_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    loss_mask[0, 3:] = True
    loss_mask[1, 5:7] = True

    def grads(loss):
        llama.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in llama.parameters() if p.grad is not None]

    got = grads(sequence_logps(llama, input_ids, attention_mask, loss_mask).sum())
    logits = llama(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    naive = (naive_token_logps(logits, input_ids[:, 1:]) * loss_mask[:, 1:]).sum()
    want = grads(naive)
    llama.zero_grad()
    assert len(got) == len(want) > 0
    for a, w in zip(got, want):
        assert torch.allclose(a, w, atol=1e-6, rtol=1e-5)


# --- one forward per pair: [prompt, chosen, rejected] ------------------------------------------

def _pairs_batches(max_length=None):
    from helpers import TEXTS, make_pairs

    from safedpo.data.tokenization import collate_pairs, collate_shared_pairs, tokenize_pairs
    from safedpo.models.tiny import make_word_tokenizer

    tok = make_word_tokenizer(TEXTS)
    items = tokenize_pairs(tok, make_pairs(), max_length=max_length)
    return tok, collate_pairs(items, tok.pad_token_id), collate_shared_pairs(items,
                                                                             tok.pad_token_id)


def _architecture(kind, vocab):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    return Qwen2ForCausalLM(Qwen2Config(**common))


@pytest.mark.parametrize("kind,kernel", [("llama", "sdpa"), ("llama", "eager"),
                                         ("qwen2", "sdpa")])
@pytest.mark.parametrize("max_length", [None, 9])  # 9: the two sides keep different prompts
def test_shared_prompt_logps_and_grads_equal_two_sequences(kind, kernel, max_length):
    from safedpo.logprobs import (
        sequence_logps_and_counts,
        shared_pair_logps_and_counts,
        shared_prompt_support,
    )

    tok, plain, shared = _pairs_batches(max_length)
    model = _architecture(kind, len(tok))
    model.config._attn_implementation = kernel
    assert shared_prompt_support(model) is None
    # a second prompt in a row starts again at position 0
    two_prompts = ((shared["position_ids"][:, 1:] == 0)
                   & (shared["input_ids"][:, 1:] != tok.pad_token_id)).any(1)
    if max_length is None:  # every prompt once: fewer tokens through the model
        assert shared["input_ids"].numel() < plain["input_ids"].numel()
        assert not two_prompts.any()
    else:  # a pair truncated to two prompts: [prompt_c, chosen, prompt_r, rejected]
        assert two_prompts.any()
    weights = torch.arange(1.0, 2 * len(shared["input_ids"]) + 1)
    results = []
    for batch, fn in ((plain, lambda m, b: sequence_logps_and_counts(
            m, b["input_ids"], b["attention_mask"], b["loss_mask"])),
                      (shared, shared_pair_logps_and_counts)):
        model.zero_grad()
        sums, counts = fn(model, batch)
        (sums * weights).sum().backward()
        results.append((sums.detach(), counts, [p.grad.clone() for p in model.parameters()]))
    (s1, c1, g1), (s2, c2, g2) = results
    assert torch.equal(c1, c2) and c1.min() > 0
    assert torch.allclose(s1, s2, atol=1e-5, rtol=0)  # fp32
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-5) for a, b in zip(g1, g2))
    assert shared["num_tokens"] == plain["num_tokens"]  # tok/s counts the same work


def test_shared_prompt_mask_and_positions_by_hand():
    from safedpo.data.tokenization import collate_shared_pairs

    # prompt [5, 6], chosen [7, 8], rejected [9]; pad 0
    item = {"chosen_input_ids": torch.tensor([5, 6, 7, 8]),
            "chosen_loss_mask": torch.tensor([False, False, True, True]),
            "rejected_input_ids": torch.tensor([5, 6, 9]),
            "rejected_loss_mask": torch.tensor([False, False, True]),
            "chosen_unsafe": False, "rejected_unsafe": True}
    b = collate_shared_pairs([item], 0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 2]]  # rejected restarts after the prompt
    # row q may see column k: the rejected token (4) sees the prompt (0, 1) and itself only
    assert b["pair_mask"][0, 0].int().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0],
                                                  [1, 1, 1, 0, 0], [1, 1, 1, 1, 0],
                                                  [1, 1, 0, 0, 1]]
    # logits at 1 predict 7 (the row's next token) and 8 at 2: chosen; the rejected 9 is not
    # the next token of 8 (position 3): it is predicted by the prompt's last position, 1
    assert b["chosen_next"].int().tolist() == [[0, 1, 1, 0, 0]]
    assert b["rejected_next"].int().tolist() == [[0, 0, 0, 0, 0]]
    assert b["first_rejected"].tolist() == [1] and b["first_rejected_id"].tolist() == [9]
    assert b["logits_start"] == 1 and b["num_tokens"] == 7
    # two prompts (truncated differently): every answer token is the row's next token
    item2 = {**item, "rejected_input_ids": torch.tensor([6, 9, 10]),
             "rejected_loss_mask": torch.tensor([False, True, True])}
    b2 = collate_shared_pairs([item2], 0)
    assert b2["input_ids"].tolist() == [[5, 6, 7, 8, 6, 9, 10]]
    assert b2["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert b2["rejected_next"].int().tolist() == [[0, 0, 0, 0, 1, 1, 0]]
    assert b2["first_rejected"].tolist() == [-1]


def test_models_without_a_tested_shared_prompt_say_why():
    from transformers import GPT2Config, GPT2LMHeadModel

    from safedpo.logprobs import shared_prompt_support

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=20, n_embd=16, n_layer=1, n_head=2))
    assert "model type 'gpt2' is not among those tested" in shared_prompt_support(gpt2)
    llama = _architecture("llama", 20)
    llama.config._attn_implementation = "flash_attention_2"
    assert "takes no custom 4D mask" in shared_prompt_support(llama)
