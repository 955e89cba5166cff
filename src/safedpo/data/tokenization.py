"""Prompt + response -> token ids and a loss mask; padding into batch tensors.

Conventions (pinned by tests/data/test_tokenization.py):
- the prompt text is already formatted (``safedpo.models.prompts.format_prompt``); the tokenizer's
  special prefix (e.g. Llama's BOS) is added once, unless the formatted text already has it;
- the response gets EOS appended once (not if it already ends with EOS);
- truncation keeps the response: the prompt is cut from the left to ``max_prompt_length``,
  then further from the left until prompt + response fits ``max_length``; only when the prompt
  is down to its special prefix (or one token) is the response cut from the right;
- ``loss_mask`` marks TARGET positions: the response tokens and the EOS, never the prompt;
- batches are right-padded (causal models then never attend to padding for real tokens).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from safedpo.models.prompts import format_prompt


def special_prefix(tokenizer) -> list[int]:
    """Ids the tokenizer puts before any text (``[bos]`` for Llama, ``[]`` for GPT-2/Qwen)."""
    cached = getattr(tokenizer, "_safedpo_prefix", None)
    if cached is not None:
        return cached
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    prefix = next((full[:i] for i in range(len(full) - len(plain) + 1)
                   if full[i:i + len(plain)] == plain), [])
    tokenizer._safedpo_prefix = list(prefix)
    return tokenizer._safedpo_prefix


def encode_prompt(tokenizer, prompt_text: str) -> list[int]:
    """Token ids of an already formatted prompt, with the special prefix exactly once."""
    ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    prefix = special_prefix(tokenizer)
    if prefix and ids[:len(prefix)] != prefix:  # chat templates often render BOS as text
        ids = prefix + ids
    return ids


def _cut_left(ids: list[int], n: int, head: int) -> list[int]:
    """Keep the first ``head`` ids (the special prefix) and the last ``n - head`` others."""
    if len(ids) <= n:
        return ids
    keep = max(n - head, 0)
    return ids[:head] + (ids[len(ids) - keep:] if keep else [])


def encode_pair(tokenizer, prompt_text: str, response_text: str, max_length: int | None,
                max_prompt_length: int | None) -> dict[str, list]:
    """-> {"input_ids": list[int] (T,), "loss_mask": list[bool] (T,)}; see module docstring."""
    prompt = encode_prompt(tokenizer, prompt_text)
    response = tokenizer(response_text, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is not None and (not response or response[-1] != eos):
        response = response + [eos]
    prefix = special_prefix(tokenizer)
    head = len(prefix) if prefix and prompt[:len(prefix)] == prefix else 0
    # The first response token needs at least one token before it to be predicted from.
    floor = min(len(prompt), max(head, 1))
    if max_prompt_length is not None:
        prompt = _cut_left(prompt, max(max_prompt_length, floor), head)
    if max_length is not None and len(prompt) + len(response) > max_length:
        prompt = _cut_left(prompt, max(max_length - len(response), floor), head)
        response = response[:max(max_length - len(prompt), 0)]  # last resort
    return {"input_ids": prompt + response,
            "loss_mask": [False] * len(prompt) + [True] * len(response)}


def _encode_all(tokenizer, prompt_template, items, max_length, max_prompt_length, desc,
                disable_tqdm):
    """Encode (prompt, response) items, formatting each distinct prompt once."""
    formatted: dict[str, str] = {}
    out = []
    for prompt, response in tqdm(items, desc=desc, disable=disable_tqdm, leave=False):
        if prompt not in formatted:
            formatted[prompt] = format_prompt(tokenizer, prompt, prompt_template)
        enc = encode_pair(tokenizer, formatted[prompt], response, max_length, max_prompt_length)
        out.append((torch.tensor(enc["input_ids"], dtype=torch.long),
                    torch.tensor(enc["loss_mask"], dtype=torch.bool)))
    return out


def tokenize_pairs(tokenizer, pairs, *, prompt_template=None, max_length=None,
                   max_prompt_length=None, disable_tqdm=True) -> list[dict]:
    """SafetyPairs -> list of {chosen_input_ids (T_c,), chosen_loss_mask (T_c,),
    rejected_input_ids (T_r,), rejected_loss_mask (T_r,), chosen_unsafe, rejected_unsafe}."""
    items = [(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)]
    enc = _encode_all(tokenizer, prompt_template, items, max_length, max_prompt_length,
                      "tokenizing pairs", disable_tqdm)
    return [{"chosen_input_ids": enc[2 * i][0], "chosen_loss_mask": enc[2 * i][1],
             "rejected_input_ids": enc[2 * i + 1][0], "rejected_loss_mask": enc[2 * i + 1][1],
             "chosen_unsafe": bool(p.chosen_unsafe), "rejected_unsafe": bool(p.rejected_unsafe)}
            for i, p in enumerate(pairs)]


def tokenize_sft(tokenizer, examples, *, prompt_template=None, max_length=None,
                 max_prompt_length=None, disable_tqdm=True) -> list[dict]:
    """(prompt, response) examples -> list of {input_ids (T,), loss_mask (T,)}."""
    enc = _encode_all(tokenizer, prompt_template, examples, max_length, max_prompt_length,
                      "tokenizing examples", disable_tqdm)
    return [{"input_ids": ids, "loss_mask": mask} for ids, mask in enc]


def pad_sequences(ids: list[torch.Tensor], masks: list[torch.Tensor], pad_token_id: int
                  ) -> dict[str, torch.Tensor | int]:
    """Right-pad -> input_ids (N, T), attention_mask (N, T), loss_mask (N, T) bool, plus
    ``logits_start`` (first target position over the batch; a python int, so the model can
    skip logits before it without a host sync) and ``num_tokens`` (non-pad tokens)."""
    lengths = [len(x) for x in ids]
    n, t = len(ids), max(lengths)
    input_ids = torch.full((n, t), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, t), dtype=torch.long)
    loss_mask = torch.zeros((n, t), dtype=torch.bool)
    for i, (x, m) in enumerate(zip(ids, masks)):
        input_ids[i, :len(x)] = x
        attention_mask[i, :len(x)] = 1
        loss_mask[i, :len(x)] = m
    starts = [int(m.float().argmax()) if m.any() else len(m) for m in masks]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask,
            "logits_start": max(min(starts), 1), "num_tokens": sum(lengths)}


def collate_pairs(items: list[dict], pad_token_id: int) -> dict:
    """B encoded pairs -> one batch of 2B rows, chosen rows first: input_ids, attention_mask,
    loss_mask (2B, T); chosen_unsafe, rejected_unsafe (B,) bool; logits_start, num_tokens."""
    batch = pad_sequences([x["chosen_input_ids"] for x in items] +
                          [x["rejected_input_ids"] for x in items],
                          [x["chosen_loss_mask"] for x in items] +
                          [x["rejected_loss_mask"] for x in items], pad_token_id)
    batch["chosen_unsafe"] = torch.tensor([x["chosen_unsafe"] for x in items], dtype=torch.bool)
    batch["rejected_unsafe"] = torch.tensor([x["rejected_unsafe"] for x in items],
                                            dtype=torch.bool)
    return batch


def collate_sft(items: list[dict], pad_token_id: int) -> dict:
    """B encoded examples -> input_ids, attention_mask, loss_mask (B, T), logits_start, ..."""
    return pad_sequences([x["input_ids"] for x in items], [x["loss_mask"] for x in items],
                         pad_token_id)


def _split(ids: torch.Tensor, loss_mask: torch.Tensor) -> tuple[list[int], list[int]]:
    """An encoded (prompt + response) -> (prompt ids, response ids)."""
    n = int(loss_mask.float().argmax()) if loss_mask.any() else len(loss_mask)
    return ids[:n].tolist(), ids[n:].tolist()


def collate_shared_pairs(items: list[dict], pad_token_id: int) -> dict:
    """B encoded pairs -> B rows, each pair's prompt run through the model once:
    [prompt, chosen, rejected], where the rejected tokens see the prompt but not the chosen
    answer (a 4D mask) and their positions restart after the prompt, so every token sees what
    it would see alone. A pair whose two sides were truncated to different prompts gets
    [prompt_c, chosen, prompt_r, rejected] with the same kind of mask.

    -> input_ids, position_ids (B, T); pair_mask (B, 1, T, T) bool (True: query may attend to
    key; a pad position attends only to itself); chosen_next, rejected_next (B, T) bool: the
    logits at position i predict the row's token i + 1, a chosen (rejected) answer token;
    first_rejected (B,): for a shared prompt, the position of the prompt's last token, whose
    logits predict the first rejected token first_rejected_id (B,) too (-1: none, the row
    predicts it in place); logits_start (first predicting position, a python int);
    num_tokens (the tokens of the two sequences as if unshared, comparable with the unshared
    path); chosen_unsafe, rejected_unsafe (B,) bool."""
    rows, segments, positions, shared_flags = [], [], [], []
    num_tokens = 0
    for x in items:
        pc, c = _split(x["chosen_input_ids"], x["chosen_loss_mask"])
        pr, r = _split(x["rejected_input_ids"], x["rejected_loss_mask"])
        num_tokens += len(pc) + len(c) + len(pr) + len(r)
        shared = pc == pr
        shared_flags.append(shared)
        rows.append(pc + c + ([] if shared else pr) + r)
        # segment of each position: 0 prompt_c, 1 chosen, 2 prompt_r, 3 rejected
        segments.append([0] * len(pc) + [1] * len(c) + ([] if shared else [2] * len(pr))
                        + [3] * len(r))
        positions.append(list(range(len(pc) + len(c))) + ([] if shared else list(range(len(pr))))
                         + list(range(len(pr), len(pr) + len(r))))
    b, t = len(items), max(map(len, rows))
    input_ids = torch.full((b, t), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((b, t), dtype=torch.long)
    seg = torch.full((b, t), -1, dtype=torch.long)
    for i in range(b):
        n = len(rows[i])
        input_ids[i, :n] = torch.tensor(rows[i], dtype=torch.long)
        position_ids[i, :n] = torch.tensor(positions[i], dtype=torch.long)
        seg[i, :n] = torch.tensor(segments[i], dtype=torch.long)
    shared_rows = torch.tensor(shared_flags, dtype=torch.bool)
    # Which segment may attend to which (query, key): a prompt to itself; an answer to its
    # prompt and itself. Row order is causal within each allowed pair of segments.
    sees = torch.zeros(5, 5, dtype=torch.bool)  # index 4 = padding (seg -1)
    for q, k in ((0, 0), (1, 0), (1, 1), (2, 2), (3, 3), (3, 2)):
        sees[q, k] = True
    q_seg, k_seg = seg[:, :, None] % 5, seg[:, None, :] % 5  # -1 -> 4
    allowed = sees[q_seg, k_seg]
    # shared rows: the rejected answer (3) sees the prompt (0), there is no prompt_r (2)
    allowed |= shared_rows[:, None, None] & (q_seg == 3) & (k_seg == 0)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    pad = seg < 0
    allowed = (allowed & causal) | (torch.eye(t, dtype=torch.bool) & pad[:, :, None])
    # In-row next-token predictions: position i predicts token i + 1 when that token is an
    # answer token of the same sequence. Only the first rejected token of a shared row is
    # predicted from elsewhere (the prompt's last token, not the last chosen token).
    nxt = seg[:, 1:]
    prev = seg[:, :-1]
    chosen_next = torch.zeros((b, t), dtype=torch.bool)
    rejected_next = torch.zeros((b, t), dtype=torch.bool)
    chosen_next[:, :-1] = (nxt == 1) & ((prev == 0) | (prev == 1))
    rejected_next[:, :-1] = (nxt == 3) & ((prev == 2) | (prev == 3))
    first_rejected = torch.full((b,), -1, dtype=torch.long)
    first_rejected_id = torch.full((b,), pad_token_id, dtype=torch.long)
    for i in range(b):
        if shared_flags[i] and (seg[i] == 3).any():
            start_r = int((seg[i] == 3).float().argmax())
            first_rejected[i] = int((seg[i] == 0).sum()) - 1  # the prompt's last token
            first_rejected_id[i] = input_ids[i, start_r]
    predicting = chosen_next | rejected_next
    starts = [int(p.float().argmax()) for p in predicting if p.any()]
    starts += [int(j) for j in first_rejected if j >= 0]
    return {"input_ids": input_ids, "position_ids": position_ids, "pair_mask": allowed[:, None],
            "chosen_next": chosen_next, "rejected_next": rejected_next,
            "first_rejected": first_rejected, "first_rejected_id": first_rejected_id,
            "logits_start": min(starts) if starts else t - 1, "num_tokens": num_tokens,
            "chosen_unsafe": torch.tensor([x["chosen_unsafe"] for x in items], dtype=torch.bool),
            "rejected_unsafe": torch.tensor([x["rejected_unsafe"] for x in items],
                                            dtype=torch.bool)}
