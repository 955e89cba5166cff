"""Both-unsafe pairs ranked by severity (``both_unsafe: by_severity``), and per-pair margins by
severity/category, checked exactly on a tabular policy, as tests/test_tabular_optimum.py does
for the plain transform (same construction: every ordered pair from pi_ref x pi_ref, labelled by
Bradley-Terry on a known reward, through the package's own ``build_pairs``; margins from the
package's own ``PairMargins``; full-batch L-BFGS in float64 on the exact expected loss).

Closed form of the by_severity optimum (docs/margins.md):
- a prompt with a safe answer (with reference mass): pi* ∝ pi_ref * exp(r / beta) * 1[safe],
  the plain SafeDPO optimum: the extra pairs only ever rank one UNSAFE answer over another, and
  every unsafe answer is already pushed to zero mass by the safe/unsafe pairs;
- a prompt whose answers are ALL unsafe: plain SafeDPO drops every pair there and leaves
  pi_ref (unsafe mass 1, severity as the reference's); by_severity always prefers the less
  severe answer, so the policy converges to the least severe answer(s): a point mass on
  argmin_y s(x, y) when it is unique (the closed form tested). With ties at the minimum the
  data says nothing about their ratio (equal severities are dropped): only the mass of the
  least-severe set is determined (-> 1), which is tested too.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from safedpo.config import TrainConfig
from safedpo.data.margins import PairMargins
from safedpo.data.sources import PreferenceRow
from safedpo.data.transform import build_pairs
from safedpo.losses import safedpo_loss

BETA = 0.5
# 5 prompts x 4 answers. 0 benign; 1, 2 mixed (a safe answer exists); 3, 4 harmful with no safe
# answer: 3 has a unique least severe answer (slot 2, not the most rewarded, little ref mass),
# 4 a tie at the minimum (slots 0 and 1).
REWARD = torch.tensor(
    [[1.0, 0.5, 0.0, -0.5],
     [1.0, 0.5, 0.2, -0.2],
     [0.8, 0.6, -0.3, 0.0],
     [1.0, 0.6, 0.1, 0.4],
     [0.2, 0.9, 1.0, 0.5]], dtype=torch.float64)
SEVERITY = torch.tensor(  # 0 = safe
    [[0, 0, 0, 0],
     [3, 1, 0, 0],
     [2, 0, 2, 0],
     [3, 2, 1, 3],
     [1, 1, 3, 2]])
UNSAFE = SEVERITY > 0
PI_REF = torch.tensor(
    [[0.1, 0.4, 0.3, 0.2],
     [0.4, 0.2, 0.2, 0.2],
     [0.25, 0.25, 0.25, 0.25],
     [0.4, 0.3, 0.1, 0.2],
     [0.2, 0.3, 0.3, 0.2]], dtype=torch.float64)
CATEGORIES = [["Violence"], ["Drugs"], ["Violence", "Drugs"], ["Cybercrime"]]  # per slot
MIXED, NO_SAFE = [0, 1, 2], [3, 4]


def config(**kw) -> TrainConfig:
    return TrainConfig(beta=BETA, **kw)


def expected_pairs(cfg: TrainConfig):
    """All ordered pairs with their probability mass after ``build_pairs`` (PKU-SafeRLHF v1 rows
    with severity and categories in meta) -> prompt, chosen, rejected, flags, weight, margin."""
    rows = []
    for p in range(REWARD.shape[0]):
        for i, j in itertools.permutations(range(REWARD.shape[1]), 2):
            w = (PI_REF[p, i] * PI_REF[p, j] * torch.sigmoid(REWARD[p, i] - REWARD[p, j])).item()
            safe_i, safe_j = not UNSAFE[p, i].item(), not UNSAFE[p, j].item()
            meta = {f"severity_{n}": int(SEVERITY[p, k]) for n, k in ((0, i), (1, j))}
            meta.update({f"harm_categories_{n}": (CATEGORIES[k] if UNSAFE[p, k] else [])
                         for n, k in ((0, i), (1, j))})
            row = PreferenceRow(
                prompt=f"prompt {p}", response_0=f"y{i}", response_1=f"y{j}",
                better_response_id=0, safer_response_id=1 if (safe_j and not safe_i) else 0,
                is_response_0_safe=safe_i, is_response_1_safe=safe_j, meta=meta)
            for pair in build_pairs([row], "safedpo", keep_both_unsafe=cfg.keep_both_unsafe,
                                    both_unsafe=cfg.both_unsafe)[0]:
                rows.append((pair, p, int(pair.chosen[1:]), int(pair.rejected[1:]), w))
    pairs, p, c, r, w = zip(*rows)
    margins = PairMargins(cfg, list(pairs))
    margin = margins.margin(torch.arange(len(pairs))).double()
    return (torch.tensor(p), torch.tensor(c), torch.tensor(r),
            torch.tensor([x.chosen_unsafe for x in pairs]),
            torch.tensor([x.rejected_unsafe for x in pairs]),
            torch.tensor(w, dtype=torch.float64), margin)


def train_tabular(cfg: TrainConfig, iters: int = 30) -> torch.Tensor:
    p, c, r, cu, ru, w, margin = expected_pairs(cfg)
    ref_logp = PI_REF.log()
    logits = ref_logp.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([logits], lr=1.0, max_iter=20, history_size=50,
                            tolerance_grad=1e-14, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logp = torch.log_softmax(logits, dim=-1)
        losses, _, _ = safedpo_loss(logp[p, c], logp[p, r], ref_logp[p, c], ref_logp[p, r],
                                    cu, ru, beta=BETA, delta=cfg.delta, margin=margin)
        loss = (w * losses).sum()
        loss.backward()
        return loss

    for _ in range(iters):
        opt.step(closure)
    return torch.softmax(logits.detach(), dim=-1)


def safe_optimum() -> torch.Tensor:
    u = PI_REF * torch.exp(REWARD / BETA) * (~UNSAFE)
    return u / u.sum(-1, keepdim=True)


def by_severity_optimum() -> torch.Tensor:
    """The closed form: pi* where a safe answer exists; else a point mass on the unique least
    severe answer (prompt 3); prompt 4 (a tie) has no closed form and stays NaN."""
    out = safe_optimum()
    out[3] = torch.nn.functional.one_hot(SEVERITY[3].argmin(), 4).double()
    out[4] = float("nan")
    return out


def tv(a, b):
    return 0.5 * (a - b).abs().sum(-1)


def test_by_severity_pairs_and_margins():
    cfg = config(both_unsafe="by_severity", both_unsafe_delta=0.5, delta=2.0)
    p, c, r, cu, ru, w, margin = expected_pairs(cfg)
    both = cu & ru
    # Every kept both-unsafe pair prefers the strictly less severe answer, whatever the label.
    assert both.any()
    assert (SEVERITY[p, c][both] < SEVERITY[p, r][both]).all()
    # Its margin is Delta_sev * (s_l - s_w); safe/unsafe pairs get delta; safe/safe 0.
    gap = (SEVERITY[p, r] - SEVERITY[p, c]).double()
    assert torch.equal(margin[both], 0.5 * gap[both])
    assert torch.equal(margin[~cu & ru], torch.full_like(margin[~cu & ru], 2.0))
    assert torch.equal(margin[~cu & ~ru], torch.zeros_like(margin[~cu & ~ru]))
    # Equal severities are dropped: prompt 2's two severity-2 answers never meet; prompt 4's
    # two severity-1 answers neither. Plain SafeDPO keeps no both-unsafe pair at all.
    assert not ((p == 2) & both).any()
    assert not ((p == 4) & (SEVERITY[p, c] == SEVERITY[p, r])).any()
    assert not (expected_pairs(config(delta=2.0))[3]).any()


@pytest.mark.parametrize("delta,both_unsafe_delta", [(0.0, 0.0), (2.0, 1.0)])
def test_by_severity_converges_to_closed_form(delta, both_unsafe_delta):
    pi = train_tabular(config(both_unsafe="by_severity", delta=delta,
                              both_unsafe_delta=both_unsafe_delta))
    target = by_severity_optimum()
    dist = tv(pi, target)
    # Where a safe answer exists: SafeDPO's safe optimum, no unsafe mass (within the safe set).
    assert dist[MIXED].max() < 1e-2, dist
    assert pi[MIXED][UNSAFE[MIXED]].max() < 1e-2
    # No safe answer, unique least severe: the point mass on it.
    assert dist[3] < 1e-2, pi[3]
    # No safe answer, tie at the minimum: all mass on the least severe set.
    least = SEVERITY[4] == SEVERITY[4].min()
    assert pi[4][least].sum() > 0.99, pi[4]


def test_plain_safedpo_leaves_all_unsafe_prompts_at_the_reference():
    # The contrast: plain SafeDPO drops every pair of prompts 3 and 4, so they keep pi_ref and
    # its severe answers (expected severity 2.5 on prompt 3 instead of 1).
    pi = train_tabular(config(delta=2.0))
    assert tv(pi, PI_REF)[NO_SAFE].max() < 1e-12
    assert tv(pi, safe_optimum())[MIXED].max() < 1e-2
    sev = (pi[3] * SEVERITY[3]).sum().item()
    assert sev == pytest.approx(2.5) and (by_severity_optimum()[3] * SEVERITY[3]).sum() == 1


@pytest.mark.parametrize("kw", [
    {"delta_by_severity": {1: 0.5, 3: 20.0}},
    {"delta_by_category": {"Violence": 10.0, "Cybercrime": 0.0}},
])
def test_per_pair_margins_keep_the_safe_optimum(kw):
    # Prop. 4.4 pair by pair: a per-pair Delta does not move the minimiser.
    pi = train_tabular(config(delta=2.0, **kw))
    assert tv(pi, safe_optimum())[MIXED].max() < 1e-2
    p, c, r, cu, ru, w, margin = expected_pairs(config(delta=2.0, **kw))
    assert len(set(margin[~cu & ru].tolist())) > 1  # the margins really differ per pair
