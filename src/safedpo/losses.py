"""Preference losses as pure functions of summed response log-probs.

Every function takes tensors of shape (B,) and returns ``(losses, chosen_rewards,
rejected_rewards)``, each (B,). Rewards are ``beta * (policy logp - reference logp)``,
detached, as TRL logs them. No model, no data: these are tested against closed forms.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _implicit_rewards(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
) -> tuple[Tensor, Tensor]:
    """Log-ratios log pi/pi_ref of the chosen and rejected responses, each (B,)."""
    return policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO (Rafailov et al. 2023): -log sigmoid(beta * (chosen log-ratio - rejected log-ratio))."""
    chosen, rejected = _implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = -F.logsigmoid(beta * (chosen - rejected))
    return losses, beta * chosen.detach(), beta * rejected.detach()


def safety_margin(chosen_unsafe: Tensor, rejected_unsafe: Tensor, delta: float) -> Tensor:
    """(h~_l - h~_w) * Delta, shape (B,). After the safety transform it is Delta or 0."""
    return (rejected_unsafe.to(torch.float32) - chosen_unsafe.to(torch.float32)) * delta


def _safety_logit(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                  ref_rejected_logps, chosen_unsafe, rejected_unsafe, beta, delta, margin=None
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """-> (beta*(logratio_w - logratio_l) - (h~_l - h~_w)*Delta, logratio_w, logratio_l), each
    (B,). SafeDPO's logit; BSO's log R is its negative. The margin is NOT scaled by beta.
    ``margin`` (B,), when given, replaces (h~_l - h~_w)*Delta: a per-pair margin
    (``safedpo.data.margins``: Delta by severity/category, both-unsafe pairs by severity)."""
    if delta < 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    chosen, rejected = _implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    if margin is None:
        margin = safety_margin(chosen_unsafe, rejected_unsafe, delta)
    margin = margin.to(chosen.dtype)
    return beta * (chosen - rejected) - margin, chosen, rejected


def safedpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_unsafe: Tensor,
    rejected_unsafe: Tensor,
    beta: float = 0.1,
    delta: float = 10.0,
    margin: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """SafeDPO on pairs AFTER the safety transformation (chosen = y~_w, rejected = y~_l).

    L = -log sigmoid(beta*logratio_w - beta*logratio_l - (h~_l - h~_w) * Delta).
    ``chosen_unsafe`` / ``rejected_unsafe`` are bool (B,) UNSAFE flags (h~ in the paper).
    Delta = 0 is exactly DPO on the transformed pairs. ``margin`` (B,): a per-pair margin that
    replaces (h~_l - h~_w) * Delta (docs/margins.md).
    """
    logit, chosen, rejected = _safety_logit(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        chosen_unsafe, rejected_unsafe, beta, delta, margin,
    )
    return -F.logsigmoid(logit), beta * chosen.detach(), beta * rejected.detach()


# --- BSO: Bregman Safety Optimization (Nguyen et al., arXiv 2605.12339), our reading ------------
#
# BSO builds on BPO (Kim et al., NeurIPS 2025, arXiv 2505.19601): preference optimization as
# matching the model ratio R_theta to the data ratio R_data = p(y_w < y_l | x) / p(y_w > y_l | x)
# under a Bregman divergence D_h with a strictly convex generator h. The loss per observed pair is
#     l_h(R) = h'(R) R - h(R) - h'(1/R)                         (BPO Thm. 3; BSO Eq. 14)
# and BSO's safety-shifted model ratio, on pairs AFTER the keep/swap/drop transform, is
#     log R_theta = -(beta * h_theta - C * (h~_l - h~_w))         (BSO Eq. 12)
# with h_theta = chosen log-ratio - rejected log-ratio and C the safety margin. C sits OUTSIDE
# beta, exactly like SafeDPO's Delta, so C is the config's `delta`; log R_theta is minus the
# SafeDPO logit. Sources: the BSO abstract (arXiv 2605.12339v1), the BPO paper's text (the SBA
# generator; s = 4 matches DPO's gradient at R = 1), and a public re-implementation that cites
# BSO Eqs. 12/14/20/23, the defaults C = 30, lambda = 0.2, s = 4, and a clamp of log R to
# [-30, 30]. We could not read BSO's own equations, so these definitions are our reading; the
# tests pin them to hand-computed numbers.

BSO_GENERATORS = ("logistic", "sba")


def bso_pointwise(log_r: Tensor, generator: str, lam: float = 0.2, s: float = 4.0) -> Tensor:
    """l_h(R) = h'(R) R - h(R) - h'(1/R) in closed form, from log R (any shape, same shape out).

    logistic: h(R) = [R log R - (1+R) log(1+R)] / 2  ->  l = log(1 + R) = -log sigmoid(-log R)
              (BPO's normalisation; it is exactly DPO / SafeDPO).
    sba:      h(R) = (R^(1+lam) - R) / (s lam (1+lam))  (scaled Basu power divergence, BPO 3.3)
              ->  l = [lam R^(1+lam) - (1+lam) R^(-lam) + 1] / (s lam (1+lam));  l(1) = 0 and
              dl/dlog R = (R^(1+lam) + R^(-lam)) / s, which equals DPO's 1/2 at R = 1 when s = 4.
              lam -> 0 is the KLIEP limit (R - 1 + log R) / s. Needs lam > -1, s > 0.
    """
    if generator == "logistic":
        return F.softplus(log_r)
    if generator == "sba":
        if lam <= -1 or s <= 0:
            raise ValueError(f"sba needs lam > -1 and s > 0, got lam={lam}, s={s}")
        if abs(lam) < 1e-8:
            return (torch.expm1(log_r) + log_r) / s
        num = lam * torch.exp((1 + lam) * log_r) - (1 + lam) * torch.exp(-lam * log_r) + 1
        return num / (s * lam * (1 + lam))
    raise ValueError(f"unknown BSO generator {generator!r}; choose one of {BSO_GENERATORS}")


def bso_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_unsafe: Tensor,
    rejected_unsafe: Tensor,
    beta: float = 0.1,
    delta: float = 30.0,
    generator: str = "sba",
    lam: float = 0.2,
    s: float = 4.0,
    log_r_min: float = -30.0,
    log_r_max: float | None = None,
    margin: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """BSO on pairs AFTER the safety transformation (our reading of arXiv 2605.12339; see above).

    All tensors (B,); unsafe flags are bool (h~). ``delta`` is BSO's safety margin C (paper
    default 30). ``generator="logistic"`` is exactly ``safedpo_loss`` with the same ``delta`` (no
    clamp: softplus is stable everywhere). ``generator="sba"`` (defaults lam 0.2, s 4) clamps
    log R to [log_r_min, log_r_max] first, as the re-implementation of the authors' code does: for
    lam > 0 the per-pair SBA loss is unbounded below as log R -> -inf (a safe/unsafe pair never
    appears reversed), so the floor (-30) bounds it; the ceiling only prevents overflow and
    defaults to 85 / (1 + |lam|), which keeps exp() finite in float32 without silencing a pair
    that starts at log R = C. With C = 30 such a pair starts at a loss (and gradient) of about
    e^36 / 4 ~ 1e15: gradient clipping and Adam's scale invariance carry it, as in the paper's
    setup; the logged loss is correspondingly large.
    ``margin`` (B,): a per-pair margin C that replaces (h~_l - h~_w) * C (docs/margins.md).
    Returns (losses, chosen_rewards, rejected_rewards), rewards = beta * log-ratio, detached.
    """
    logit, chosen, rejected = _safety_logit(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        chosen_unsafe, rejected_unsafe, beta, delta, margin,
    )
    log_r = -logit
    if generator != "logistic":
        upper = 85.0 / (1.0 + abs(lam)) if log_r_max is None else log_r_max
        if log_r_min >= upper:
            raise ValueError(f"log_r_min ({log_r_min}) must be below log_r_max ({upper})")
        log_r = log_r.clamp(log_r_min, upper)
    losses = bso_pointwise(log_r, generator, lam=lam, s=s)
    return losses, beta * chosen.detach(), beta * rejected.detach()


def _dpo_entry(pc, pr, rc, rr, chosen_unsafe, rejected_unsafe, *, beta, delta=0.0,
               margin=None):
    # DPO has no safety margin: delta and margin are unused
    return dpo_loss(pc, pr, rc, rr, beta=beta)


def _safedpo_entry(pc, pr, rc, rr, chosen_unsafe, rejected_unsafe, *, beta, delta, margin=None):
    return safedpo_loss(pc, pr, rc, rr, chosen_unsafe, rejected_unsafe, beta=beta, delta=delta,
                        margin=margin)


def _bso_entry(generator):
    # loss_kwargs for BSO: bso_loss's own options (lam, s, log_r_min, log_r_max).
    def entry(pc, pr, rc, rr, chosen_unsafe, rejected_unsafe, *, beta, delta, lam=0.2, s=4.0,
              log_r_min=-30.0, log_r_max=None, margin=None):
        return bso_loss(pc, pr, rc, rr, chosen_unsafe, rejected_unsafe, beta=beta, delta=delta,
                        generator=generator, lam=lam, s=s, log_r_min=log_r_min,
                        log_r_max=log_r_max, margin=margin)

    entry.__name__ = f"_bso_{generator}_entry"
    return entry


# loss_type -> fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_unsafe,
#                 rejected_unsafe, *, beta, delta, margin=None, **loss_kwargs)
#              -> (losses, r_chosen, r_rejected); margin (B,) replaces (h~_l - h~_w) * delta
# Keywords every entry takes from the objective, not from loss_kwargs.
CORE_KEYWORDS = ("beta", "delta", "margin")
LOSSES = {
    "dpo": _dpo_entry,
    "safedpo": _safedpo_entry,
    "bso_logistic": _bso_entry("logistic"),
    "bso_sba": _bso_entry("sba"),
}


def loss_options(loss_type: str) -> tuple[str, ...]:
    """The ``loss_kwargs`` keys ``LOSSES[loss_type]`` accepts (its keywords past beta, delta,
    margin)."""
    params = inspect.signature(LOSSES[loss_type]).parameters.values()
    return tuple(p.name for p in params
                 if p.kind is p.KEYWORD_ONLY and p.name not in CORE_KEYWORDS)


def check_loss_kwargs(loss_type: str, loss_kwargs: dict) -> None:
    """ValueError naming a ``loss_kwargs`` key that ``LOSSES[loss_type]`` does not accept, and
    the ones it does."""
    accepted = loss_options(loss_type)
    for key in loss_kwargs:
        if key not in accepted:
            takes = f"it accepts {', '.join(accepted)}" if accepted else "it takes none"
            raise ValueError(f"unknown key '{key}' for loss_type '{loss_type}'; {takes}")
