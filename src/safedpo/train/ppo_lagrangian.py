"""``safedpo saferlhf``: the Safe RLHF baseline (Dai et al. 2023, arXiv 2310.12773), i.e.
PPO-Lagrangian from the SFT reference with a reward model and a cost model.

The problem is SafeDPO's (PAPER.md) with the hard constraint relaxed to an expected one:
    max_pi E[r] - kl_coef KL(pi || pi_ref)   s.t.   E[c] <= cost_threshold,
solved as min_{lambda >= 0} max_pi E[r] - lambda (E[c] - cost_threshold) (the Lagrangian).

One step (``global_step``) = one rollout batch:
1. Rollouts: ``per_device_train_batch_size`` prompts of ``dataset``, one sampled answer each
   (transformers ``generate``, temperature ``temperature``, at most ``response_length`` tokens,
   the answer ends at its first EOS). The reward and cost models score the decoded answer
   (any ``safedpo eval`` scorer: a sequence classifier, a safe-rlhf score model, or the world's
   oracle); the policy, the frozen reference and the two critics score every answer token.
2. Per-token rewards and costs: the score at the last answer token, plus the KL penalty
   kl_t = log pi(y_t) - log pi_ref(y_t) with weight -kl_coef in the reward and +kl_coef in the
   cost, so it keeps weight kl_coef in the combined advantage below whatever lambda is (and
   the objective is the one above). safe-rlhf splits its kl_coeff k in halves the same way, so
   its penalty weighs k / 2: kl_coef = k / 2 here is its setting. Then each token's reward and
   cost is clipped to +-``score_clip`` (as safe-rlhf: after the KL term is added).
3. GAE (``gamma``, ``lam``) on each, with two critics (reward, cost), as safe-rlhf's: with
   ``critic_init=score_models`` each starts as a copy of its score model (backbone and score
   head), with the oracle (no model) or ``critic_init=policy`` from the policy's backbone with
   a zero head.
4. lambda <- max(0, lambda + lambda_lr * (mean episode cost - cost_threshold)), capped at
   ``lambda_max``, where the mean is over the last ``episode_cost_window_size`` episodes of
   all processes (safe-rlhf's moving window; saved with each checkpoint): projected gradient
   ascent on the Lagrangian. A clamp, not safe-rlhf's log-lambda: lambda reaches exactly 0
   when the constraint holds (the policy then follows the reward alone, as the Lagrangian
   says), and it rises again at the rate of the violation, not in proportion to its own
   (possibly tiny) value.
5. ``num_ppo_epochs`` passes over the rollouts in ``num_mini_batches`` mini-batches, each one
   step of the policy's optimizer on the clipped policy objective (``cliprange``) on the
   advantage (A_r - lambda A_c) / (1 + lambda) (Safe RLHF's normalisation: the advantage keeps
   the scale of one objective, so the clip range and learning rate mean the same at every
   lambda), plus ``ptx_coef`` times the NLL of SFT examples of ``ptx_dataset`` when set; and
   one step of the critics' own optimizer (``critic_learning_rate``) on ``vf_coef`` times the
   clipped value losses (``cliprange_value``). Each gradient is clipped to ``max_grad_norm``
   on its own, as safe-rlhf's actor and critic engines are. Means over tokens are per answer,
   then over the answers (safe-rlhf's ``masked_mean``). Dropout (LoRA's too) is off
   throughout: the old log-probs and the update's come from the same network.

Why not TRL: TRL 1.16 has no PPOTrainer any more (removed after 0.2x), and its RLOOTrainer
has no critic or GAE, weights its rewards by fixed ``reward_weights`` and owns its loop and
checkpoints; the cost advantage and a lambda that changes every step would have to be
patched into its internals. What is reused: transformers generation, peft (LoRA, reference =
adapter disabled), accelerate, and this project's run dir, checkpoints, metrics and scorers.

The run dir is ``train``'s: config.yaml, metrics.jsonl, checkpoints/step-N (exact resume:
policy + critics + both optimizers and schedules + RNG, lambda and the cost window in
trainer_state.json), model/ (the policy only) and train_summary.json. When
``reward_model_path`` / ``cost_model_path`` are not given, ``safedpo rm`` / ``safedpo cm``
runs train them first into OUTPUT_DIR/reward_model and OUTPUT_DIR/cost_model (from
``model_name_or_path``, with ``score_model_overrides``), and their time counts in
``train_seconds``: the cost of the whole method. One process or DDP; DeepSpeed, FSDP and
fp16 mixed precision are refused at once.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import set_seed
from torch import nn
from transformers import GenerationConfig

from safedpo.config import (
    ConfigError,
    SafeRLHFConfig,
    TrainConfig,
    coerce,
    fields_of,
    read_yaml,
    validate,
)
from safedpo.data import DataError, load_rows
from safedpo.data.sources import load_sft_examples
from safedpo.data.tokenization import collate_sft, encode_prompt, tokenize_sft
from safedpo.evaluate.scorers import (
    OracleCostScorer,
    OracleRewardScorer,
    SafeRLHFScoreModelScorer,
    check_score_model_path,
    load_model_scorer,
)
from safedpo.logprobs import token_logps
from safedpo.models.loading import load_model_and_tokenizer, resolve_dtype
from safedpo.models.prompts import format_prompt
from safedpo.train import distributed
from safedpo.train.driver import StepDriver
from safedpo.train.engines import check_settings
from safedpo.train.loop import batch_indices
from safedpo.train.runtime import (
    check_models,
    check_output_dir,
    disable_dropout,
    end_run,
    hold_output_dir,
    load_policy,
    make_accelerator,
    make_optimizer,
    prepare_output_dir,
    require,
    save_model,
)
from safedpo.train.score_models import train_score_model

# --- the math (pure functions) ----------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each row's True positions of ``mask``, then over the rows (safe-rlhf's
    ``masked_mean``): every answer weighs the same whatever its length. (..., T) -> ().
    A row with no True position counts as 0."""
    m = mask.to(x.dtype)
    return ((x * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()


def token_rewards(reward: torch.Tensor, cost: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float, score_clip: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards and costs (B, T) of answers scored ``reward``, ``cost`` (B,) with
    per-token KL estimates ``kl`` (B, T): r_t = -kl_coef kl_t, c_t = +kl_coef kl_t, plus the
    score at the answer's last token; then each token's value clipped to +-score_clip (as
    safe-rlhf clamps them: after the KL term is added, not the score before). Zero outside
    ``mask``."""
    m = mask.to(kl.dtype)
    rewards = end_scores(reward, mask) - kl_coef * kl * m
    costs = end_scores(cost, mask) + kl_coef * kl * m
    return _clip(rewards, score_clip) * m, _clip(costs, score_clip) * m


def push_episode_costs(window: list[float], costs, size: int) -> list[float]:
    """The lambda update's window: the last ``size`` episode costs after adding ``costs``
    (oldest first; safe-rlhf's ``deque(maxlen=episode_cost_window_size)``)."""
    return (list(window) + [float(c) for c in costs])[-size:]


def clip_and_step(parts, max_grad_norm: float | None) -> list[torch.Tensor]:
    """After ``backward``: for each (parameters, optimizer, scheduler) of ``parts`` (the
    policy's, the critics'), clip the gradient to ``max_grad_norm`` ON ITS OWN (as safe-rlhf's
    separate actor and critic engines do: a large critic gradient cannot shrink the policy's
    step), then step, schedule and zero it. -> each part's gradient norm before clipping."""
    norms = []
    for params, optimizer, scheduler in parts:
        params = [p for p in params if p.grad is not None]
        norms.append(torch.nn.utils.clip_grad_norm_(
            params, max_grad_norm if max_grad_norm else float("inf")))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return norms


def end_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) scores placed at each row's last True position of ``mask`` (B, T), zeros elsewhere."""
    last = (mask.long().sum(1) - 1).clamp(min=0)
    out = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
    return out.scatter(1, last[:, None], scores[:, None]) * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16) over (B, T) tokens;
    ``mask`` marks each row's answer tokens (a prefix). -> (advantages, returns = A + V),
    zero outside the mask. delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1},
    with V and A after the last token taken as 0 (the episode ends there)."""
    m = mask.to(values.dtype)
    values, rewards = values * m, rewards * m
    advantages = torch.zeros_like(values)
    next_value = next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * m[:, t]
        next_value = values[:, t]
        advantages[:, t] = next_adv
    return advantages, (advantages + values) * m


def combined_advantage(reward_adv: torch.Tensor, cost_adv: torch.Tensor,
                       lagrange: float) -> torch.Tensor:
    """Safe RLHF's actor advantage (the Lagrangian's, Dai et al. 2023 Sec. 3.3, scaled by
    1 / (1 + lambda) as safe-rlhf's PPO-Lagrangian does): (A_r - lambda A_c) / (1 + lambda)."""
    return (reward_adv - lagrange * cost_adv) / (1.0 + lagrange)


def ppo_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, cliprange: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7) as a loss, averaged over answer
    tokens: mean max(-A r, -A clip(r, 1 - eps, 1 + eps)), r = exp(logp - old_logp).
    -> (loss, share of tokens where the clipped term was taken)."""
    ratio = torch.exp(logps - old_logps)
    plain = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    return masked_mean(torch.maximum(plain, clipped), mask), \
        masked_mean((clipped > plain).float(), mask)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, cliprange_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: 0.5 mean max((V - R)^2, (clip(V, V_old +- eps) - R)^2).
    -> (loss, share of tokens where the clipped term was taken)."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    plain_sq, clipped_sq = (values - returns) ** 2, (clipped - returns) ** 2
    return 0.5 * masked_mean(torch.maximum(plain_sq, clipped_sq), mask), \
        masked_mean((clipped_sq > plain_sq).float(), mask)


def update_lambda(lagrange: float, mean_cost: float, threshold: float, lr: float,
                  lambda_max: float | None = None) -> float:
    """One projected gradient-ascent step on the Lagrangian's multiplier (Dai et al. 2023,
    Sec. 3.3): its gradient is the constraint violation E[c] - threshold; lambda stays in
    [0, lambda_max]."""
    value = max(0.0, lagrange + lr * (mean_cost - threshold))
    return value if lambda_max is None else min(value, lambda_max)


# --- models ---------------------------------------------------------------------------------

class ValueModel(nn.Module):
    """A critic: a backbone with a linear head giving one value per token. ``head`` (a
    linear layer, e.g. a score model's score head) gives the head's start (its output ``row``);
    None = a zero head (every value 0)."""

    def __init__(self, backbone: nn.Module, hidden_size: int, head: nn.Linear | None = None,
                 row: int = 0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            if head is not None:
                self.head.weight.copy_(head.weight[row:row + 1].float())
                if head.bias is not None:
                    self.head.bias.copy_(head.bias[row:row + 1].float())

    def forward(self, input_ids, attention_mask, position_ids):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids, use_cache=False).last_hidden_state
        return self.head(hidden.to(self.head.weight.dtype)).float()[..., 0]  # (B, T)


class PolicyAndCritic(nn.Module):
    """The policy and the reward and cost critics in one module (one DDP wrapper, one
    checkpoint); each of policy and critics has its own optimizer (see ``_train``)."""

    def __init__(self, policy: nn.Module, reward_critic: ValueModel, cost_critic: ValueModel):
        super().__init__()
        self.policy, self.reward_critic, self.cost_critic = policy, reward_critic, cost_critic

    def critics(self) -> nn.ModuleList:
        return nn.ModuleList([self.reward_critic, self.cost_critic])

    def forward(self, input_ids, attention_mask, position_ids, start: int, temperature: float,
                ptx: dict | None = None):
        """-> (answer-token log-probs (B, R), values (B, R, 2): reward, cost), plus with
        ``ptx`` (input_ids, attention_mask, loss_mask of SFT examples) their mean token NLL:
        positions start-1 .. T-2 predict the answer tokens start .. T-1. One call, so DDP
        sees one forward per backward."""
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids, use_cache=False).logits
        logps = token_logps(logits[:, start - 1:-1] / temperature, input_ids[:, start:])
        values = torch.stack([critic(input_ids, attention_mask, position_ids)[:, start - 1:-1]
                              for critic in (self.reward_critic, self.cost_critic)], -1)
        if ptx is None:
            return logps, values
        ids, lm = ptx["input_ids"], ptx["loss_mask"][:, 1:].float()
        out = self.policy(input_ids=ids, attention_mask=ptx["attention_mask"], use_cache=False)
        nll = -(token_logps(out.logits[:, :-1], ids[:, 1:]) * lm).sum() / lm.sum().clamp(min=1)
        return logps, values, nll


def _critic_start(scorer) -> tuple[nn.Module, nn.Linear, int] | None:
    """(backbone, score head, output row) of a model scorer, None for the oracle."""
    model = getattr(scorer, "model", None)
    if model is None:
        return None
    if isinstance(scorer, SafeRLHFScoreModelScorer):
        return model.model, model.score_head, scorer.score_index
    head = getattr(model, "score", None)
    if not isinstance(head, nn.Linear) or head.out_features != 1:
        raise ConfigError(f"{scorer.name}: no one-output 'score' layer to start a critic from; "
                          "set critic_init: policy")
    return getattr(model, model.base_model_prefix), head, 0


def _load_critic(config: SafeRLHFConfig, scorer, tokenizer) -> ValueModel:
    """The critic of ``scorer``'s kind: with critic_init=score_models and a model scorer, a copy
    of the score model (backbone and score head, as safe-rlhf starts its reward critic from the
    reward model and its cost critic from the cost model); else (the oracle, or
    critic_init=policy) the policy's backbone with a zero head."""
    start = _critic_start(scorer) if config.critic_init == "score_models" else None
    if start is not None:
        if scorer.tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ConfigError(f"{scorer.name}: its tokenizer is not the policy's, so a critic "
                              "started from it cannot read the policy's tokens; set "
                              "critic_init: policy")
        backbone, head, row = start
        backbone = copy.deepcopy(backbone)
        if config.dtype != "auto":
            backbone.to(resolve_dtype(config.dtype))
        critic = ValueModel(backbone, head.in_features, head, row)
    else:
        lm, _ = load_model_and_tokenizer(config.model_name_or_path,
                                         trust_remote_code=config.trust_remote_code,
                                         gguf_file=config.gguf_file, dtype=config.dtype)
        critic = ValueModel(getattr(lm, lm.base_model_prefix), lm.config.hidden_size)
    disable_dropout(critic)  # PPO runs without dropout (see _train)
    return critic.requires_grad_(True).train()


def _make_scorer(path: str, kind: str, config: SafeRLHFConfig, device):
    if path == "oracle":
        return (OracleRewardScorer if kind == "reward" else OracleCostScorer)()
    return load_model_scorer(path, kind, batch_size=max(config.per_device_train_batch_size, 8),
                             device=device, prompt_template=config.prompt_template,
                             progress=False)


# --- rollouts -------------------------------------------------------------------------------

def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        attn[i, width - len(s):] = 1
    return ids, attn


def answer_mask(response: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, R) bool: the generated tokens up to and including the first EOS."""
    is_eos = (response == eos_id).long()
    return (is_eos.cumsum(1) - is_eos) == 0


@torch.no_grad()
def rollout(model, reference, tokenizer, prompts: list[str], prompt_ids: list[list[int]],
            scorers, config: SafeRLHFConfig, device, counts: dict) -> dict:
    """Sample one answer per prompt and score it. -> tensors of the batch (see the keys)."""
    c = config
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    ids, attn = (t.to(device) for t in _left_pad(prompt_ids, pad_id))
    start = ids.shape[1]
    gen = GenerationConfig(max_new_tokens=c.response_length, do_sample=True,
                           temperature=c.temperature, top_k=0, top_p=1.0, pad_token_id=pad_id,
                           eos_token_id=eos_id)
    model.eval()
    out = model.policy.generate(input_ids=ids, attention_mask=attn, generation_config=gen)
    response = out[:, start:]
    mask = answer_mask(response, eos_id)
    ended = ((response == eos_id) & mask).any(1)  # else cut at response_length
    seq = torch.cat([ids, torch.where(mask, response, pad_id)], 1)
    seq_attn = torch.cat([attn, mask.long()], 1)
    pos = (seq_attn.cumsum(1) - 1).clamp(min=0)  # left padding: as generate numbers positions
    logps, values = model(seq, seq_attn, pos, start, c.temperature)
    ref_logps = reference(seq, seq_attn, pos, start)
    texts = tokenizer.batch_decode(torch.where(mask, response, pad_id), skip_special_tokens=True)
    reward_scorer, cost_scorer = scorers
    reward = torch.tensor(reward_scorer.score(prompts, texts), device=device, dtype=torch.float)
    cost = torch.tensor(cost_scorer.score(prompts, texts), device=device, dtype=torch.float)
    b = len(prompts)
    counts["generated_tokens"] += b * response.shape[1]
    counts["forward"] += 4 * b + sum(b for s in scorers if hasattr(s, "model"))
    model.train()
    return {"seq": seq, "attn": seq_attn, "pos": pos, "start": start, "response": response,
            "mask": mask, "logps": logps, "ref_logps": ref_logps, "values": values,
            "reward": reward, "cost": cost, "ended": ended}


def _reference_forward(config: SafeRLHFConfig, unwrapped, device):
    """(seq, attn, pos, start) -> reference log-probs of the answer tokens (B, R)."""
    if config.use_peft:
        policy = unwrapped.policy
        ctx = policy.disable_adapter
    else:
        policy, _ = load_model_and_tokenizer(
            config.ref_model_name_or_path or config.model_name_or_path,
            trust_remote_code=config.trust_remote_code, dtype=config.dtype,
            gguf_file=None if config.ref_model_name_or_path else config.gguf_file)
        policy.requires_grad_(False).eval().to(device)
        ctx = None

    def forward(seq, attn, pos, start):
        with (ctx() if ctx else nullcontext()):
            logits = policy(input_ids=seq, attention_mask=attn, position_ids=pos,
                            use_cache=False).logits
        return token_logps(logits[:, start - 1:-1] / config.temperature, seq[:, start:])
    return forward


# --- the run ----------------------------------------------------------------------------------

def _score_models(config: SafeRLHFConfig, out: Path, resuming: bool) -> tuple[dict, dict]:
    """Reward/cost model paths, training the ones not given. -> (paths, summaries)."""
    paths, summaries = {}, {}
    for kind in ("reward", "cost"):
        given = getattr(config, f"{kind}_model_path")
        if given:
            paths[kind] = given
            continue
        run_dir = out / f"{kind}_model"
        done = run_dir / "train_summary.json"
        summary = json.loads(done.read_text()) if resuming and done.is_file() else None
        if summary is None or summary.get("interrupted"):
            # max_steps counts rollouts here: the score models run num_train_epochs unless
            # their overrides say otherwise.
            values = {"max_steps": -1, **{k: coerce(k, v, "score_model_overrides")
                                          for k, v in config.score_model_overrides.items()}}
            shared = TrainConfig(**{k: getattr(config, k) for k in fields_of(TrainConfig)})
            sub = dataclasses.replace(shared, output_dir=str(run_dir), overwrite_output_dir=True,
                                      resume_from_checkpoint=None, use_peft=False, **values)
            summary = train_score_model(sub, kind)
        paths[kind], summaries[kind] = str(run_dir / "model"), summary
    return paths, summaries


def _score_model_passes(summary: dict) -> dict:
    """Sequences through a score model's forward and backward: 2 per pair of each step's
    batch (its own batch size, from its run's config.yaml; one process)."""
    run = read_yaml(Path(summary["output_dir"]) / "config.yaml")
    rows = 2 * summary["global_step"] * run["per_device_train_batch_size"] \
        * run["gradient_accumulation_steps"]
    return {"forward": rows, "backward": rows}


def train(config: SafeRLHFConfig, *, callbacks=()) -> dict:
    """PPO-Lagrangian from ``model_name_or_path`` on the prompts of ``dataset``; -> the train
    summary (``train_seconds`` includes the reward/cost models it trained)."""
    check_settings("saferlhf", config)
    validate(config)  # a config built in code is checked as a resolved one is
    require(config.dataset, "dataset")
    # Settings checks come before the previous run is replaced and the score models trained.
    b = config.per_device_train_batch_size
    if b % config.num_mini_batches:
        raise ConfigError(f"per_device_train_batch_size ({b}) must be a multiple of "
                          f"num_mini_batches ({config.num_mini_batches})")
    if distributed.requested().kind in ("DEEPSPEED", "FSDP"):
        raise ConfigError("safedpo saferlhf runs on one process or DDP (torchrun), not under "
                          "DeepSpeed or FSDP: its critic, reference and rollouts are not sharded")
    if os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower() == "fp16":
        raise ConfigError("safedpo saferlhf does not run with fp16 mixed precision (its policy "
                          "and critics have two optimizers, accelerate has one loss scaler); "
                          "use bf16: true or full precision")
    check_models(config)
    for kind in ("reward", "cost"):  # a reward/cost model of the right kind, by its config
        path = getattr(config, f"{kind}_model_path")
        if path and path != "oracle":
            try:
                check_score_model_path(path, kind, f"{kind}_model_path")
            except ValueError as e:
                raise ConfigError(str(e)) from None
    check_output_dir(config)
    lock = hold_output_dir(config, PartialState())  # one run per output_dir
    try:
        return _train(config, callbacks)
    finally:
        if lock is not None:
            lock.close()


def _train(config: SafeRLHFConfig, callbacks) -> dict:
    resume = check_output_dir(config)  # again: no other run can change the dir now
    t_begin = time.time()
    rows = load_rows(config.dataset, split=config.dataset_split, config_name=config.dataset_config,
                     column_map=config.column_map, skip_invalid=config.skip_invalid)
    prompts = list(dict.fromkeys(r.prompt for r in rows.rows))
    if not prompts:
        raise DataError(f"{config.dataset}: no prompts (split '{config.dataset_split}')")
    # The previous run goes (and config.yaml is written) before score models train into it.
    out = prepare_output_dir(config, PartialState(), resume)
    model_paths, score_runs = _score_models(config, out, resume is not None)
    accelerator = make_accelerator(config)
    try:
        set_seed(config.seed)
        policy, tokenizer, _ = load_policy(config)
        # PPO runs without dropout, LoRA's included (as TRL's PPO; safe-rlhf's models have
        # none): the rollout's log-probs and the update's are then the same function, so the
        # ratio of the first update is exactly 1.
        disable_dropout(policy)
        scorers = tuple(_make_scorer(model_paths[k], k, config, accelerator.device)
                        for k in ("reward", "cost"))
        model = PolicyAndCritic(policy, *(_load_critic(config, s, tokenizer) for s in scorers))
        ptx = _ptx_examples(config, tokenizer)
        prompt_ids = [encode_prompt(tokenizer, format_prompt(tokenizer, p, config.prompt_template))
                      [-(config.max_prompt_length or 10**9):] for p in prompts]
        b, nproc, rank = config.per_device_train_batch_size, accelerator.num_processes, \
            accelerator.process_index
        steps_per_epoch = math.ceil(len(prompts) / (b * nproc))
        total_steps = config.max_steps if config.max_steps > 0 else \
            math.ceil(config.num_train_epochs * steps_per_epoch)
        updates = config.num_ppo_epochs * config.num_mini_batches
        # Two optimizers and schedules, as safe-rlhf's actor and critic engines: the policy's
        # at learning_rate, the critics' at critic_learning_rate.
        opt_p, sched_p = make_optimizer(model.policy, config, total_steps * updates)
        opt_c, sched_c = make_optimizer(
            model.critics(), dataclasses.replace(config, learning_rate=config.critic_learning_rate),
            total_steps * updates)
        model, opt_p, opt_c, sched_p, sched_c = accelerator.prepare(model, opt_p, opt_c, sched_p,
                                                                    sched_c)
        optimizers = _Optimizers(opt_p, opt_c)
        unwrapped = accelerator.unwrap_model(model)
        parts = (([p for p in unwrapped.policy.parameters() if p.requires_grad], opt_p, sched_p),
                 (list(unwrapped.critics().parameters()), opt_c, sched_c))
        reference = _reference_forward(config, unwrapped, accelerator.device)
        for scorer in scorers:
            scorer.check(prompts)
        initial = {"global_step": 0, "train_seconds": 0.0, "num_tokens": 0, "episode": 0,
                   "lagrange": config.lambda_init, "episode_costs": [],
                   "passes": {"forward": 0, "backward": 0, "generated_tokens": 0}}
        with StepDriver(config, accelerator, out, resume, name="saferlhf",
                        total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                        initial=initial, callbacks=callbacks,
                        postfix=lambda last: f"cost={last['cost/mean']:.3f} "
                        f"lambda={last['lagrange/lambda']:.3f}" if last else "") as driver:
            state = driver.state
            for step in driver.steps():
                indices = batch_indices(len(prompts), step, steps_per_epoch, b * nproc,
                                        config.seed)[rank * b:(rank + 1) * b]
                roll = rollout(unwrapped, reference, tokenizer, [prompts[i] for i in indices],
                               [prompt_ids[i] for i in indices], scorers, config,
                               accelerator.device, state["passes"])
                # lambda follows the mean cost of the last episode_cost_window_size episodes
                # (every process's, so the window saved with a checkpoint is every one's).
                window = state["episode_costs"] = push_episode_costs(
                    state["episode_costs"], accelerator.gather(roll["cost"]).tolist(),
                    config.episode_cost_window_size)
                window_cost = sum(window) / len(window)
                state["lagrange"] = update_lambda(state["lagrange"], window_cost,
                                                  config.cost_threshold, config.lambda_lr,
                                                  config.lambda_max)
                stats = _ppo_update(model, accelerator, parts, roll, config, state["lagrange"],
                                    step, state["passes"], ptx, tokenizer.pad_token_id)
                driver.record(stats, stats.pop("_loss"), step,
                              tokens=int(roll["attn"].sum()) * nproc)
                state["episode"] += b * nproc
                head = {"episode": state["episode"], "learning_rate": sched_p.get_last_lr()[0],
                        "critic_learning_rate": sched_c.get_last_lr()[0],
                        "lagrange/lambda": state["lagrange"],
                        "lagrange/episode_cost": window_cost}
                if driver.end_step(step, head, model, optimizers):
                    break
        state = driver.finish(model, optimizers)
        if not driver.interrupted:
            save_model(accelerator, unwrapped.policy, tokenizer, out, config)
        passes = dict(state["passes"])
        for run in score_runs.values():
            for k, v in _score_model_passes(run).items():
                passes[k] += v
        return driver.write_summary(driver.summary(
            t_begin, train_seconds=state["train_seconds"] + sum(
                r["train_seconds"] for r in score_runs.values()),
            ppo_seconds=state["train_seconds"], lagrange=state["lagrange"],
            num_prompts=len(prompts), passes=passes, ppo_passes=state["passes"],
            reward_model=model_paths["reward"], cost_model=model_paths["cost"],
            score_models={k: {"train_seconds": r["train_seconds"],
                              "global_step": r["global_step"], "output_dir": r["output_dir"]}
                          for k, r in score_runs.items()}))
    finally:
        end_run(accelerator)


class _Optimizers:
    """The policy's and the critics' optimizers as one for the finite-state check."""

    def __init__(self, *optimizers):
        self.optimizers = optimizers

    @property
    def state(self) -> dict:
        return {k: v for o in self.optimizers for k, v in o.state.items()}


def _ptx_examples(config: SafeRLHFConfig, tokenizer) -> list[dict] | None:
    """The tokenized SFT examples of ``ptx_dataset`` (None when ptx_coef is 0)."""
    if not config.ptx_coef:
        return None
    examples = load_sft_examples(config.ptx_dataset, split=config.dataset_split,
                                 prompt_column=config.prompt_column,
                                 response_column=config.response_column)
    if not examples:
        raise DataError(f"{config.ptx_dataset}: no SFT examples for ptx_coef "
                        f"(split '{config.dataset_split}')")
    return tokenize_sft(tokenizer, examples, prompt_template=config.prompt_template,
                        max_length=config.max_length, max_prompt_length=config.max_prompt_length)


def _ppo_update(model, accelerator, parts, roll: dict, config: SafeRLHFConfig, lagrange: float,
                step: int, counts: dict, ptx: list[dict] | None = None, pad_id: int = 0) -> dict:
    """Advantages of the rollout, then num_ppo_epochs x num_mini_batches updates, each one
    step of the policy's and of the critics' optimizer (``parts``, see ``clip_and_step``).
    -> metric sums for ``MetricSums`` (plus ``_loss``, the last loss, for the finite check)."""
    c, mask = config, roll["mask"]
    m = mask.float()
    kl = (roll["logps"] - roll["ref_logps"]) * m
    rewards, costs = token_rewards(roll["reward"], roll["cost"], kl, mask, c.kl_coef,
                                   c.score_clip)
    adv_r, ret_r = gae(rewards, roll["values"][..., 0], mask, c.gamma, c.lam)
    adv_c, ret_c = gae(costs, roll["values"][..., 1], mask, c.gamma, c.lam)
    advantages = combined_advantage(adv_r, adv_c, lagrange)
    returns = torch.stack([ret_r, ret_c], -1)
    b = mask.shape[0]
    mb = b // c.num_mini_batches
    stats = {"reward/mean": (roll["reward"].sum(), b), "cost/mean": (roll["cost"].sum(), b),
             "cost/unsafe_frac": ((roll["cost"] > 0).float().sum(), b),
             "kl": (kl.sum(), b), "response_length/mean": (m.sum(), b),
             "val/num_eos_tokens": (roll["ended"].float().sum(), 1)}
    names = ["loss/policy_avg", "loss/value_avg", "loss/value_reward_avg",
             "loss/value_cost_avg", "policy/clipfrac_avg", "val/clipfrac_avg",
             "policy/approxkl_avg", "policy/grad_norm_avg", "critic/grad_norm_avg"]
    if ptx is not None:
        names.append("loss/ptx_avg")
    totals = {k: torch.zeros((), device=m.device) for k in names}
    gen = torch.Generator().manual_seed(c.seed * 1_000_003 + step)  # resumable order
    # SFT examples for ptx: a resumable draw of their own, another one on each process
    ptx_gen = torch.Generator().manual_seed((c.seed * 1_000_003 + step) * 1_009
                                            + accelerator.process_index + 1)
    loss = torch.zeros(())
    for _ in range(c.num_ppo_epochs):
        order = torch.randperm(b, generator=gen).to(m.device)
        for k in range(c.num_mini_batches):
            i = order[k * mb:(k + 1) * mb]
            extra = {}
            if ptx is not None:
                pick = torch.randint(len(ptx), (mb,), generator=ptx_gen).tolist()
                batch = collate_sft([ptx[j] for j in pick], pad_id)
                extra["ptx"] = {key: batch[key].to(m.device)
                                for key in ("input_ids", "attention_mask", "loss_mask")}
            out = model(roll["seq"][i], roll["attn"][i], roll["pos"][i], roll["start"],
                        c.temperature, **extra)
            logps, values = out[0], out[1]
            pg, pg_clip = ppo_policy_loss(logps, roll["logps"][i], advantages[i], m[i],
                                          c.cliprange)
            vf_r, clip_r = value_loss(values[..., 0], roll["values"][i, :, 0], returns[i, :, 0],
                                      m[i], c.cliprange_value)
            vf_c, clip_c = value_loss(values[..., 1], roll["values"][i, :, 1], returns[i, :, 1],
                                      m[i], c.cliprange_value)
            # Policy and critics share no parameter: one backward gives each its own gradient.
            loss = pg + c.vf_coef * (vf_r + vf_c)
            if ptx is not None:
                loss = loss + c.ptx_coef * out[2]
                totals["loss/ptx_avg"] = totals["loss/ptx_avg"] + out[2].detach()
                counts["forward"] += mb
                counts["backward"] += mb
            accelerator.backward(loss)
            norm_p, norm_c = clip_and_step(parts, c.max_grad_norm)
            counts["forward"] += 3 * len(i)  # policy and two critics
            counts["backward"] += 3 * len(i)
            with torch.no_grad():
                approx = 0.5 * masked_mean((logps - roll["logps"][i]) ** 2, m[i])
            for name, v in (("loss/policy_avg", pg), ("loss/value_avg", (vf_r + vf_c) / 2),
                            ("loss/value_reward_avg", vf_r), ("loss/value_cost_avg", vf_c),
                            ("policy/clipfrac_avg", pg_clip),
                            ("val/clipfrac_avg", (clip_r + clip_c) / 2),
                            ("policy/approxkl_avg", approx), ("policy/grad_norm_avg", norm_p),
                            ("critic/grad_norm_avg", norm_c)):
                totals[name] = totals[name] + v.detach().to(m.device)
    n = c.num_ppo_epochs * c.num_mini_batches
    stats.update({k: (v, n) for k, v in totals.items()})
    stats["_loss"] = loss.detach()
    return stats


def _clip(x: torch.Tensor, bound: float | None) -> torch.Tensor:
    return x if bound is None else x.clamp(-bound, bound)
