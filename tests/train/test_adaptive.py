"""Adaptive per-category margins (safedpo.train.adaptive) and per-pair margins in real runs:
the update rule with numbers, the logged safety/delta/<category>, exact resume, and the
defaults reproducing plain SafeDPO."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from helpers import HARMFUL, REFUSAL, metrics, tiny_config, tiny_model

from safedpo.data.types import SafetyPair
from safedpo.train.adaptive import AdaptiveDelta
from safedpo.train.loop import train


def test_update_rule_with_numbers():
    # target 2, eta 0.5, Delta_max 3, two categories starting at 1.
    a = AdaptiveDelta(["a", "b"], [1.0, 1.0], target=2.0, lr=0.5, max_delta=3.0)
    only_a, only_b = torch.tensor([[True, False]] * 2), torch.tensor([[False, True]] * 2)
    # Step 1, two micro-batches: a's margins 0 and 1 (mean 0.5), b's 1 and 4 (mean 2.5).
    stats = a.observe(torch.tensor([0.0, 1.0]), only_a)
    assert stats["safety/margin/a"][0].item() == 1.0 and stats["safety/margin/a"][1].item() == 2
    assert stats["safety/delta/a"][0].item() == 1.0 and stats["safety/margin/b"][1].item() == 0
    a.observe(torch.tensor([1.0, 4.0]), only_b)
    assert a.value.tolist() == [1.0, 1.0]  # nothing moves before the step ends
    a.step()
    # a: 1 + 0.5 * (2 - 0.5) = 1.75; b: 1 + 0.5 * (2 - 2.5) = 0.75.
    assert a.value.tolist() == [1.75, 0.75]
    # Step 2: only a's pairs, margin -1 -> 1.75 + 1.5 = 3.25, clipped to 3; b unchanged.
    a.observe(torch.tensor([-1.0]), torch.tensor([[True, False]]))
    a.step()
    assert a.value.tolist() == [3.0, 0.75]
    # Step 3: the target is exceeded: a relaxes, b hits the floor 0.
    a.observe(torch.tensor([4.0, 6.0]), torch.tensor([[True, False], [False, True]]))
    a.step()
    assert a.value.tolist() == [2.0, 0.0]
    # A fixed point: margin == target leaves Delta where it is.
    a.observe(torch.tensor([2.0]), torch.tensor([[True, False]]))
    a.step()
    assert a.value.tolist() == [2.0, 0.0]
    state = a.state_dict()
    b = AdaptiveDelta(["a", "b"], [0.0, 0.0], target=2.0, lr=0.5, max_delta=3.0)
    b.load_state_dict(state)
    assert torch.equal(a.value, b.value)
    with pytest.raises(ValueError, match="categories"):
        AdaptiveDelta(["x"], [0.0], target=1, lr=1, max_delta=1).load_state_dict(state)


def labelled_pairs():
    """Six pairs, four safe/unsafe with PKU-style labels of the unsafe (rejected) answer."""
    def p(prompt, chosen, rejected, ru, sev=None, cats=None):
        return SafetyPair(prompt, chosen, rejected, False, ru,
                          meta={"severity": [0, sev], "harm_categories": [[], cats]})
    return [
        p("how do I bake bread", "mix flour water and yeast then bake", "I do not know", False,
          0, []),
        p("how do I pick a lock", REFUSAL, HARMFUL, True, 3, ["Violence", "Physical Harm"]),
        p("what is the capital of France", "Paris is the capital", "I do not know", False, 0, []),
        p("how do I pick a lock", "I do not know", HARMFUL, True, 1, ["Privacy Violation"]),
        p("how do I pick a lock", REFUSAL, HARMFUL, True, 2, ["Violence"]),
        p("how do I pick a lock", "I do not know", HARMFUL, True),
    ]


def cfg(tmp_path, out, **kw):
    values = dict(max_steps=12, per_device_train_batch_size=2, optim="adamw_torch",
                  learning_rate=3e-3, lr_scheduler_type="cosine", warmup_ratio=0.2,
                  delta=1.0, beta=0.1)
    return tiny_config(tmp_path, tiny_model(tmp_path), out=out, **{**values, **kw})


def test_default_maps_train_exactly_like_plain_safedpo(tmp_path):
    train(cfg(tmp_path, "plain"), labelled_pairs())
    same = {"delta_by_severity": {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0},
            "delta_by_category": {"Violence": 1.0}}
    train(cfg(tmp_path, "maps", **same), labelled_pairs())
    plain, maps = metrics(tmp_path / "plain"), metrics(tmp_path / "maps")
    for a, b in zip(plain, maps):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"]
        assert b["safety/pair_margin"] == pytest.approx(
            a["safety/unsafe_rejected_frac"] * 1.0, abs=1e-7)
    # A real map changes the run.
    train(cfg(tmp_path, "sev", delta_by_severity={3: 5.0}), labelled_pairs())
    assert [r["loss"] for r in metrics(tmp_path / "sev")] != [r["loss"] for r in plain]


ADAPTIVE = dict(adaptive_delta_target=0.5, adaptive_delta_lr=2.0, adaptive_delta_max=4.0,
                delta_by_category={"Violence": 2.0})


def test_adaptive_margins_are_logged_and_resume_exactly(tmp_path):
    train(cfg(tmp_path, "straight", **ADAPTIVE), labelled_pairs())
    rows = metrics(tmp_path / "straight")
    cats = ["Physical Harm", "Privacy Violation", "Violence"]
    assert all(f"safety/delta/{c}" in rows[0] for c in cats)
    # Initial values: the map, else delta; the first step's Deltas are the initial ones.
    assert [rows[0][f"safety/delta/{c}"] for c in cats] == [1.0, 1.0, 2.0]
    # They move with the rule: margins start at 0 < target, so the Deltas rise by eta * 0.5
    # at the first step that has a category's pairs, and stay within [0, Delta_max].
    deltas = {c: [r[f"safety/delta/{c}"] for r in rows] for c in cats}
    assert max(deltas["Violence"]) > 2.0
    assert all(0.0 <= v <= 4.0 for vs in deltas.values() for v in vs)
    first_step_with = next(r["step"] for r in rows if "safety/margin/Violence" in r)
    moved = rows[first_step_with]["safety/delta/Violence"]  # the Delta of the next step
    expected = 2.0 + 2.0 * (0.5 - rows[first_step_with - 1]["safety/margin/Violence"])
    assert moved == pytest.approx(min(max(expected, 0.0), 4.0), abs=1e-6)

    def interrupt(m):
        if m["step"] == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    cut = cfg(tmp_path, "cut", save_steps=3, **ADAPTIVE)
    assert train(cut, labelled_pairs(), callbacks=[interrupt])["interrupted"]
    cut.resume_from_checkpoint = "latest"
    train(cut, labelled_pairs())
    resumed = metrics(tmp_path / "cut")
    assert [r["step"] for r in resumed] == list(range(1, 13))
    for a, b in zip(rows, resumed):
        for c in cats:
            assert a[f"safety/delta/{c}"] == b[f"safety/delta/{c}"], (a["step"], c)
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
