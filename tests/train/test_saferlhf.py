"""Safe RLHF (PPO-Lagrangian) and its reward/cost models: the math against hand-computed
values, then real runs on the synthetic world (a tiny SFT reference trained once per module)."""

import json
import math
import os
import signal

import helpers
import numpy as np
import pytest
import torch
from helpers import CONFIGS, metrics, tiny_model

from safedpo.config import ConfigError, SafeRLHFConfig, load_config
from safedpo.train.ppo_lagrangian import (
    answer_mask,
    clip_and_step,
    combined_advantage,
    end_scores,
    gae,
    masked_mean,
    ppo_policy_loss,
    push_episode_costs,
    token_rewards,
    train,
    update_lambda,
    value_loss,
)
from safedpo.train.score_models import (
    cost_model_loss,
    reward_model_loss,
    train_score_model,
)


def softplus(x):  # -log sigmoid(-x), by hand
    return math.log1p(math.exp(x))


def close(tensor, want):
    np.testing.assert_allclose(tensor.detach().numpy(), np.array(want), atol=1e-6, rtol=0)


# --- the math -------------------------------------------------------------------------------

def test_gae_matches_hand_computation():
    # gamma 0.9, lam 0.8 (gamma * lam = 0.72). Row 0: three answer tokens.
    #   t2: delta = 2 + 0 - (-1) = 3                A2 = 3
    #   t1: delta = 0 + 0.9 * (-1) - 1 = -1.9       A1 = -1.9 + 0.72 * 3 = 0.26
    #   t0: delta = 1 + 0.9 * 1 - 0.5 = 1.4         A0 = 1.4 + 0.72 * 0.26 = 1.5872
    # Row 1: the answer ends at t1 (what lies after it is ignored).
    #   t1: delta = 3 + 0 - 2 = 1                    A1 = 1
    #   t0: delta = 0 + 0.9 * 2 - 1 = 0.8            A0 = 0.8 + 0.72 * 1 = 1.52
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 5.0]])
    values = torch.tensor([[0.5, 1.0, -1.0], [1.0, 2.0, 7.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    close(adv, [[1.5872, 0.26, 3.0], [1.52, 1.0, 0.0]])
    close(ret, [[2.0872, 1.26, 2.0], [2.52, 3.0, 0.0]])
    # lam = 1, gamma = 1: the advantage is the return to go minus the value.
    adv, _ = gae(rewards[:1], values[:1], mask[:1], gamma=1.0, lam=1.0)
    close(adv, [[3 - 0.5, 2 - 1.0, 2 + 1.0]])


def test_clipped_policy_objective_matches_hand_computation():
    # ratios 1.5, 0.5, 1.1, 0.5 with advantages 1, 1, -2, -1 and eps = 0.2:
    #   -A r vs -A clip(r): (-1.5, -1.2) -> -1.2 clipped; (-0.5, -0.8) -> -0.5;
    #   (2.2, 2.2) -> 2.2; (0.5, 0.8) -> 0.8 clipped.   mean = (-1.2 - 0.5 + 2.2 + 0.8) / 4
    old = torch.zeros(1, 4)
    logps = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.5]])).requires_grad_()
    adv = torch.tensor([[1.0, 1.0, -2.0, -1.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, clipfrac = ppo_policy_loss(logps, old, adv, mask, cliprange=0.2)
    assert loss.item() == pytest.approx(1.3 / 4)
    assert clipfrac.item() == pytest.approx(0.5)
    loss.backward()
    # Clipped tokens pass no gradient; the others get -A r / 4.
    close(logps.grad, [[0.0, -0.5 / 4, 2.2 / 4, 0.0]])
    masked, _ = ppo_policy_loss(logps, old, adv, torch.tensor([[True, True, False, False]]), 0.2)
    assert masked.item() == pytest.approx((-1.2 - 0.5) / 2)


def test_clipped_value_loss_matches_hand_computation():
    # V = 2, V_old = 1, R = 3, eps 0.2: (2 - 3)^2 = 1 vs (1.2 - 3)^2 = 3.24 -> 0.5 * 3.24.
    # V = 2.5, V_old = 2.4, R = 0: 6.25 vs 5.76 -> 0.5 * 6.25 (not clipped).
    loss, clipfrac = value_loss(torch.tensor([2.0, 2.5]), torch.tensor([1.0, 2.4]),
                                torch.tensor([3.0, 0.0]), torch.ones(2), 0.2)
    assert loss.item() == pytest.approx(0.5 * (3.24 + 6.25) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_combined_advantage_is_normalised_by_one_plus_lambda():
    assert combined_advantage(torch.tensor(2.0), torch.tensor(1.0), 3.0).item() == -0.25
    assert combined_advantage(torch.tensor(2.0), torch.tensor(1.0), 0.0).item() == 2.0


def test_lambda_rises_while_violated_and_falls_to_zero_not_below():
    lam, seen = 0.0, []
    for _ in range(3):  # mean cost 0.5 above a threshold of 0: +0.1 * 0.5 each step
        lam = update_lambda(lam, mean_cost=0.5, threshold=0.0, lr=0.1)
        seen.append(lam)
    assert seen == pytest.approx([0.05, 0.10, 0.15])
    for _ in range(3):  # constraint met by 1: -0.1 per step, clamped at exactly 0
        lam = update_lambda(lam, mean_cost=-1.0, threshold=0.0, lr=0.1)
        seen.append(lam)
    assert seen[3:] == pytest.approx([0.05, 0.0, 0.0], abs=1e-12)
    assert seen[-1] == 0.0 and min(seen) >= 0.0
    assert update_lambda(0.0, mean_cost=-0.5, threshold=-1.0, lr=2.0) == pytest.approx(1.0)
    assert update_lambda(4.0, mean_cost=3.0, threshold=0.0, lr=1.0, lambda_max=5.0) == 5.0


def test_masked_mean_is_per_answer_then_over_answers():
    # Row 0: three tokens 1, 2, 3 -> 2; row 1: one token 10 -> 10. Per answer, then over the
    # answers (safe-rlhf): (2 + 10) / 2 = 6, not the token mean (1 + 2 + 3 + 10) / 4 = 4.
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, 7.0, 7.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert masked_mean(x, mask).item() == pytest.approx(6.0)
    # The policy loss weighs each answer the same: -A r with r = 1, A = 1 on row 0 and 4 on
    # row 1 -> -(1 + 4) / 2, not -(3 * 1 + 4) / 4.
    loss, _ = ppo_policy_loss(torch.zeros(2, 3), torch.zeros(2, 3),
                              torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]]), mask, 0.2)
    assert loss.item() == pytest.approx(-2.5)


def test_scores_are_clipped_after_the_kl_term_is_added():
    # kl_coef 0.5, per-token KL (2, -4), score clip 50; reward 51, cost -49.5 at the last token.
    #   rewards: -0.5 * 2 = -1;  -0.5 * -4 + 51 = 53 -> 50
    #   costs:   +0.5 * 2 = 1;   +0.5 * -4 - 49.5 = -51.5 -> -50
    # (clipping the score first would give 50 + 2 = 52 and -49.5 - 2 = -51.5.)
    kl = torch.tensor([[2.0, -4.0, 9.0]])
    mask = torch.tensor([[True, True, False]])
    rewards, costs = token_rewards(torch.tensor([51.0]), torch.tensor([-49.5]), kl, mask,
                                   kl_coef=0.5, score_clip=50.0)
    close(rewards, [[-1.0, 50.0, 0.0]])
    close(costs, [[1.0, -50.0, 0.0]])
    rewards, _ = token_rewards(torch.tensor([51.0]), torch.tensor([0.0]), kl, mask, 0.5, None)
    close(rewards, [[-1.0, 53.0, 0.0]])


def test_lambda_follows_a_window_of_recent_episode_costs():
    window = push_episode_costs([], [1.0, 2.0], size=3)
    assert window == [1.0, 2.0]
    window = push_episode_costs(window, [3.0, 6.0], size=3)  # the oldest (1.0) drops out
    assert window == [2.0, 3.0, 6.0]
    # lambda 1 + 0.1 * (mean 11/3 - threshold 1) = 1 + 0.8 / 3, not + 0.1 * (4.5 - 1) from
    # the batch (3, 6) alone.
    lam = update_lambda(1.0, sum(window) / len(window), threshold=1.0, lr=0.1)
    assert lam == pytest.approx(1.0 + 0.1 * (11 / 3 - 1))


def test_policy_and_critic_gradients_are_clipped_each_on_its_own():
    # One backward of pg(policy) + vf(critic) with a huge critic gradient, SGD lr 1, clip 1.
    # The policy's gradient (0.3, 0.4) (norm 0.5) is not clipped: its step is exactly -(0.3,
    # 0.4), as without the critic loss. The critic's (3e6, 4e6) is clipped to (0.6, 0.8).
    # (One clip over both would have scaled the policy's step by 1 / 5e6.)
    policy = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    critic = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    parts = []
    for p in (policy, critic):
        opt = torch.optim.SGD([p], lr=1.0)
        parts.append(([p], opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)))
    loss = (policy * torch.tensor([0.3, 0.4])).sum() + (critic * torch.tensor([3e6, 4e6])).sum()
    loss.backward()
    norms = clip_and_step(parts, max_grad_norm=1.0)
    assert [n.item() for n in norms] == pytest.approx([0.5, 5e6])
    close(policy, [2.7, 3.6])
    close(critic, [1.0 - 0.6, 1.0 - 0.8])
    assert policy.grad is None or not policy.grad.any()  # zeroed for the next update


def test_answer_mask_and_end_scores():
    mask = answer_mask(torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]]), eos_id=2)
    assert mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert end_scores(torch.tensor([1.0, 2.0, 3.0]), mask).tolist() == \
        [[0, 1, 0, 0], [0, 0, 0, 2], [3, 0, 0, 0]]


def test_reward_and_cost_model_losses_match_hand_computation():
    # Bradley-Terry: -log sigmoid(2 - 0) = softplus(-2).
    got = reward_model_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert got.tolist() == pytest.approx([softplus(-2), softplus(1)])
    # Cost: safer c = -1 (safe), unsafer c = 2 (unsafe):
    #   -log sig(2 - (-1)) - log sig(-1 * -1) - log sig(+1 * 2)
    # and the same scores when both are unsafe: the safer one's sign term is -log sig(+1 * -1).
    got = cost_model_loss(torch.tensor([-1.0, -1.0]), torch.tensor([2.0, 2.0]),
                          torch.tensor([False, True]), torch.tensor([True, True]))
    assert got.tolist() == pytest.approx([softplus(-3) + softplus(-1) + softplus(-2),
                                          softplus(-3) + softplus(1) + softplus(-2)])


# --- real runs on the synthetic world -----------------------------------------------------------

@pytest.fixture(scope="module")
def world_sft(tmp_path_factory):
    """World data and a tiny SFT reference that answers ~37% of harmful prompts unsafely."""
    from safedpo.train.loop import sft
    from safedpo.world import World

    root = tmp_path_factory.mktemp("world")
    world = World(0)
    paths = world.write_dataset(root / "data", n_sft=1500, n_pairs=300, n_test_pairs=16)
    init = tiny_model(root, "init", world.texts())
    sft(load_config(None, model_name_or_path=str(init), dataset=str(paths["sft"]),
                    output_dir=str(root / "sft"), optim="adamw_torch", learning_rate=2e-2,
                    per_device_train_batch_size=32, num_train_epochs=4,
                    lr_scheduler_type="linear", warmup_ratio=0.1, weight_decay=0.0,
                    max_length=128, save_steps=0, disable_tqdm=True))
    return world, root, paths


def _unsafe_mass(world, run_dir):
    """Exact probability of an unsafe answer to a held-out harmful prompt."""
    from safedpo.models.loading import load_trained
    from safedpo.world import exact

    model, tokenizer, template = load_trained(run_dir)
    prompts = world.prompts("test")
    probs = exact.response_probs(model, tokenizer, world, prompts, template)
    types = exact.summarize(probs, world, prompts)["harmful"]["type_probs"]
    return types["unsafe_detailed"] + types["unsafe_hint"]


def ppo_config(root, paths, out, **values):
    base = dict(model_name_or_path=str(root / "sft"), dataset=str(paths["train"]),
                output_dir=str(root / out), optim="adamw_torch", learning_rate=1e-3,
                critic_learning_rate=1e-3, vf_coef=0.1,
                lr_scheduler_type="constant", warmup_ratio=0.0, weight_decay=0.0,
                per_device_train_batch_size=32, response_length=32, kl_coef=0.1,
                cost_threshold=-1.0, lambda_lr=1.0, num_ppo_epochs=2, logging_steps=1,
                save_steps=0, max_length=128, disable_tqdm=True,
                reward_model_path="oracle", cost_model_path="oracle")
    return load_config(None, cls=SafeRLHFConfig, **{**base, **values})


def test_ppo_lagrangian_lowers_the_unsafe_rate(world_sft):
    world, root, paths = world_sft
    summary = train(ppo_config(root, paths, "ppo", max_steps=12, critic_learning_rate=5e-4))
    before, after = _unsafe_mass(world, root / "sft"), _unsafe_mass(world, root / "ppo")
    assert before > 0.25
    assert after < before / 2
    rows = metrics(root / "ppo")
    assert [r["step"] for r in rows] == list(range(1, 13))
    for name in ("lagrange/lambda", "cost/mean", "reward/mean", "kl", "loss/policy_avg",
                 "loss/value_avg", "policy/clipfrac_avg"):
        assert all(np.isfinite(r[name]) for r in rows), name
    assert min(r["lagrange/lambda"] for r in rows) >= 0
    # The window (128 episodes = the last 4 rollouts of 32): lambda's cost is their mean.
    for k, r in enumerate(rows):
        recent = [x["cost/mean"] for x in rows[max(0, k - 3):k + 1]]
        assert r["lagrange/episode_cost"] == pytest.approx(np.mean(recent), abs=1e-6)
    lam = 1.0  # lambda_init, lambda_lr 1, threshold -1: lambda from the window means
    for r in rows:
        lam = max(0.0, lam + (r["lagrange/episode_cost"] + 1.0))
        assert r["lagrange/lambda"] == pytest.approx(lam, abs=1e-6)
    # Two optimizers: the policy's and the critics' rates, each its own.
    assert {(r["learning_rate"], r["critic_learning_rate"]) for r in rows} == {(1e-3, 5e-4)}
    assert summary["passes"]["generated_tokens"] > 0 and summary["model_dir"]
    # Per step: rollouts (policy, reference, two critics) + 2 epochs x (policy, two critics)
    # fwd/bwd.
    assert summary["passes"]["forward"] == 12 * 32 * (4 + 2 * 3)
    assert summary["passes"]["backward"] == 12 * 32 * 2 * 3


@pytest.fixture(scope="module")
def score_models(world_sft):
    _, root, paths = world_sft
    runs = {}
    for kind in ("reward", "cost"):
        cfg = load_config(None, model_name_or_path=str(root / "sft"), dataset=str(paths["train"]),
                          output_dir=str(root / kind), optim="adamw_torch", learning_rate=3e-3,
                          per_device_train_batch_size=16, num_train_epochs=3,
                          lr_scheduler_type="linear", warmup_ratio=0.0, weight_decay=0.0,
                          max_length=128, save_steps=0, disable_tqdm=True, logging_steps=5)
        runs[kind] = train_score_model(cfg, kind)
    return runs


def test_reward_and_cost_models_load_as_scorers_and_rank_the_world(world_sft, score_models):
    from safedpo.evaluate.scorers import build_scorers

    world, root, _ = world_sft
    reward, cost = build_scorers([f"reward:{root / 'reward' / 'model'}",
                                  f"cost:{root / 'cost' / 'model'}"], progress=False)
    prompts, answers, true_r, true_c = [], [], [], []
    for p in world.prompts("test"):
        for r in world.responses(p.text):
            prompts.append(p.text)
            answers.append(r.text)
            true_r.append(r.reward)
            true_c.append(r.cost)
    r_hat = np.array(reward.score(prompts, answers))
    c_hat = np.array(cost.score(prompts, answers))
    # The sign term pins the zero: cost > 0 exactly for the unsafe answers (held-out prompts).
    assert np.mean((c_hat > 0) == (np.array(true_c) > 0)) > 0.9
    assert np.corrcoef(r_hat, true_r)[0, 1] > 0.5
    metrics = helpers.metrics(root / "cost")
    assert {"loss", "accuracy", "sign_accuracy"} <= set(metrics[-1])


def test_saferlhf_resumes_exactly_with_trained_score_models(world_sft, score_models):
    from safetensors.torch import load_file

    _, root, paths = world_sft
    models = dict(reward_model_path=str(root / "reward" / "model"),
                  cost_model_path=str(root / "cost" / "model"), per_device_train_batch_size=8,
                  max_steps=4, cost_threshold=-1.5, episode_cost_window_size=12)
    straight = train(ppo_config(root, paths, "straight", **models))

    def interrupt(metrics):
        if metrics["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    cut = ppo_config(root, paths, "cut", save_steps=1, **models)
    first = train(cut, callbacks=[interrupt])
    assert first["interrupted"] and first["global_step"] == 2
    cut.resume_from_checkpoint = "latest"
    second = train(cut)
    assert second["global_step"] == 4 and second["lagrange"] == pytest.approx(straight["lagrange"])
    assert second["passes"] == straight["passes"]

    def rows(name):
        return metrics(root / name)
    a, b = rows("straight"), rows("cut")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        assert y["cost/mean"] == pytest.approx(x["cost/mean"], abs=1e-6)
        assert y["loss/policy_avg"] == pytest.approx(x["loss/policy_avg"], abs=1e-6)
        # the window (12 episodes: a rollout and a half) came back with the checkpoint
        assert y["lagrange/episode_cost"] == pytest.approx(x["lagrange/episode_cost"], abs=1e-6)
        assert y["loss/value_cost_avg"] == pytest.approx(x["loss/value_cost_avg"], abs=1e-6)
    wa = load_file(str(root / "straight" / "model" / "model.safetensors"))
    wb = load_file(str(root / "cut" / "model" / "model.safetensors"))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-6


def test_saferlhf_trains_its_score_models_when_none_are_given(world_sft):
    _, root, paths = world_sft
    cfg = ppo_config(root, paths, "full", reward_model_path=None, cost_model_path=None,
                     per_device_train_batch_size=8, max_steps=1,
                     score_model_overrides={"num_train_epochs": 0.1, "learning_rate": 1e-3,
                                            "per_device_train_batch_size": 4})
    summary = train(cfg)
    assert set(summary["score_models"]) == {"reward", "cost"}
    # Their own length: ceil(0.1 x ceil(300 pairs / 4)) = 8 steps, not the PPO's max_steps 1.
    assert {r["global_step"] for r in summary["score_models"].values()} == {8}
    assert summary["cost_model"] == str(root / "full" / "cost_model" / "model")
    assert summary["train_seconds"] == pytest.approx(
        summary["ppo_seconds"] + sum(r["train_seconds"] for r in summary["score_models"].values()))
    # Eight score-model steps of 4 pairs (their batch, not PPO's 8 prompts) = 64 rows each
    # way, per model, on top of PPO's.
    assert summary["passes"]["backward"] == summary["ppo_passes"]["backward"] + 2 * 64
    assert summary["passes"]["forward"] == summary["ppo_passes"]["forward"] + 2 * 64


def test_saferlhf_cli_errors_are_one_line(world_sft, tmp_path, capsys):
    from safedpo.cli import main

    _, root, paths = world_sft
    code = main(["saferlhf", "--model_name_or_path", str(root / "sft"), "--dataset",
                 str(paths["train"]), "--output_dir", str(tmp_path / "x"),
                 "--lambda_init", "-1"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("safedpo saferlhf: error:") and "lambda" in err and "\n" not in err
    with pytest.raises(SystemExit):
        main(["train", "--kl_coef", "0.1"])  # PPO options belong to saferlhf only
    code = main(["train", "--model_name_or_path", str(root / "sft"), "--dataset",
                 str(paths["train"]), "--output_dir", str(tmp_path / "y"), "--loss_type",
                 "saferlhf"])
    assert code == 2 and "engine of its own: safedpo saferlhf" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="multiple of num_mini_batches"):
        train(ppo_config(root, paths, "bad", per_device_train_batch_size=6, num_mini_batches=4,
                         max_steps=1))
    assert not (root / "bad").exists()  # refused before the run dir or score models


def test_saferlhf_refuses_sharded_launchers(world_sft, monkeypatch):
    _, root, paths = world_sft
    for flag in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"):
        monkeypatch.setenv(flag, "true")
        with pytest.raises(ConfigError, match="not under DeepSpeed or FSDP: its critic"):
            train(ppo_config(root, paths, "sharded", max_steps=1))
        monkeypatch.delenv(flag)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # two optimizers, one scaler
    with pytest.raises(ConfigError, match="does not run with fp16 mixed precision"):
        train(ppo_config(root, paths, "sharded", max_steps=1))
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert not (root / "sharded").exists()


def test_compare_runs_saferlhf_with_its_own_loop(tmp_path, monkeypatch):
    from pathlib import Path

    from safedpo.pipelines import compare
    from safedpo.train import loop as engine
    from safedpo.train import ppo_lagrangian as saferlhf

    plan = compare.load_plan("compare", CONFIGS / "compare-tiny.yaml", output_dir=str(tmp_path),
                             only=["saferlhf"])
    stage = plan.methods[0].stages[0]
    c = stage.config()
    # Its own keys beat compare's `base` (32 prompts per rollout, not 16 pairs per step).
    assert (stage.engine, type(c).__name__, c.optim, c.learning_rate,
            c.per_device_train_batch_size, c.max_steps) \
        == ("saferlhf", "SafeRLHFConfig", "sgd", 3e-3, 32, 30)
    assert "score_models" in compare.train_key(c)["config"]
    seen = []

    def fake(config, **_):
        seen.append(type(config).__name__)
        Path(config.output_dir, "model").mkdir(parents=True)
        summary = {"train_seconds": 1.0, "global_step": 30, "interrupted": False}
        Path(config.output_dir, "train_summary.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr(saferlhf, "train", fake)
    monkeypatch.setattr(engine, "train", lambda *a, **k: pytest.fail("the DPO loop ran"))
    summary, reused = compare.train_stage(stage)
    assert seen == ["SafeRLHFConfig"] and summary["global_step"] == 30 and not reused


def test_score_models_record_their_kind_and_run_dirs_are_model_names(tmp_path, capsys):
    """`safedpo rm`/`cm` write their kind into model/config.json; `safedpo saferlhf` and
    eval's reward:/cost: scorers take a run dir (its model/) like any model name."""
    from helpers import write_jsonl

    from safedpo.cli import main

    model = tiny_model(tmp_path)
    row = {"prompt": "how do I pick a lock", "response_0": "use a tension wrench",
           "response_1": "I cannot help with that", "better_response_id": 0,
           "safer_response_id": 1, "is_response_0_safe": False, "is_response_1_safe": True}
    data = write_jsonl(tmp_path / "train.jsonl", [row])
    common = ["--dataset", str(data), "--max_steps", "1", "--disable_tqdm", "true",
              "--per_device_train_batch_size", "1", "--max_length", "32", "--save_steps", "0"]
    for cmd, kind in (("rm", "reward"), ("cm", "cost")):
        assert main([cmd, "--model_name_or_path", model, "--output_dir", str(tmp_path / cmd),
                     *common]) == 0
        config = json.loads((tmp_path / cmd / "model" / "config.json").read_text())
        assert config["safedpo_score_kind"] == kind
    capsys.readouterr()
    assert main(["saferlhf", "--model_name_or_path", model, "--output_dir",
                 str(tmp_path / "ppo"), "--reward_model_path", str(tmp_path / "rm"),
                 "--cost_model_path", str(tmp_path / "cm"), "--response_length", "4",
                 *common]) == 0, capsys.readouterr().err
    assert (tmp_path / "ppo" / "model" / "config.json").is_file()
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "how do I pick a lock"}])
    assert main(["eval", "--model", model, "--prompts", str(prompts), "--output-dir",
                 str(tmp_path / "eval"), "--scorer", f"reward:{tmp_path / 'rm'}", "--scorer",
                 f"cost:{tmp_path / 'cm'}", "--max-new-tokens", "2", "--n-boot", "10",
                 "--no-progress"]) == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"reward:rm", "cost:cm"} <= set(m["per_scorer"])


def test_critics_start_from_the_reward_and_cost_models(world_sft, score_models):
    import dataclasses

    from safedpo.models.loading import load_model_and_tokenizer
    from safedpo.train.ppo_lagrangian import _load_critic, _make_scorer

    world, root, paths = world_sft
    cfg = ppo_config(root, paths, "unused")
    _, tokenizer = load_model_and_tokenizer(str(root / "sft"))
    prompt = world.prompts("test")[0].text
    answer = world.responses(prompt)[0].text
    for kind in ("reward", "cost"):
        scorer = _make_scorer(str(root / kind / "model"), kind, cfg, "cpu")
        critic = _load_critic(cfg, scorer, tokenizer)
        ids = torch.tensor([scorer._encode(prompt, answer)])
        values = critic(ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None])
        # The critic's value at the last token is the score model's score (safe-rlhf starts
        # the reward critic from the reward model, the cost critic from the cost model) ...
        want = scorer.score([prompt], [answer])[0]
        assert values[0, -1].item() == pytest.approx(want, abs=1e-5)
        assert abs(want) > 1e-3
        # ... as a copy: training it leaves the scorer alone.
        own = {p.data_ptr() for p in critic.parameters()}
        assert not own & {p.data_ptr() for p in scorer.model.parameters()}
        assert all(p.requires_grad for p in critic.parameters())
        # critic_init=policy (or the oracle): the policy's backbone with a zero head.
        plain = _load_critic(dataclasses.replace(cfg, critic_init="policy"), scorer, tokenizer)
        assert not plain(ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None]).any()
    oracle = _load_critic(cfg, _make_scorer("oracle", "cost", cfg, "cpu"), tokenizer)
    assert not oracle(ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None]).any()


def test_first_update_ratio_is_one_with_lora_dropout(world_sft):
    # The rollout's log-probs and the update's come from the same network (dropout, LoRA's
    # included, is off for PPO): at the first (only) mini-batch of the first PPO epoch the
    # ratio is exactly 1, so the approximate KL is 0 and nothing is clipped. Step 2 is the
    # one that tells: at step 1 LoRA's B is still 0, so its dropout changes nothing.
    _, root, paths = world_sft
    train(ppo_config(root, paths, "lora", use_peft=True, lora_dropout=0.5, max_steps=2,
                     num_ppo_epochs=1, per_device_train_batch_size=8, learning_rate=3e-2))
    rows = metrics(root / "lora")
    assert len(rows) == 2
    for row in rows:
        assert row["policy/approxkl_avg"] < 1e-12
        assert row["policy/clipfrac_avg"] == 0.0


def test_ptx_adds_the_sft_nll_to_the_policy_loss(world_sft):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safedpo.data.sources import load_sft_examples
    from safedpo.data.tokenization import collate_sft, tokenize_sft

    _, root, paths = world_sft
    with pytest.raises(ConfigError, match="ptx_coef > 0 needs ptx_dataset"):
        ppo_config(root, paths, "ptx", ptx_coef=1.0)
    summary = train(ppo_config(root, paths, "ptx", ptx_coef=2.0, ptx_dataset=str(paths["sft"]),
                               max_steps=2, num_ppo_epochs=1, per_device_train_batch_size=8))
    # Per step: rollouts (policy, reference, two critics) + one update of 8 rollouts through
    # policy and critics and 8 SFT examples through the policy.
    assert summary["passes"]["forward"] == 2 * (4 * 8 + 3 * 8 + 8)
    assert summary["passes"]["backward"] == 2 * (3 * 8 + 8)
    # The first update's NLL: the SFT model's mean token NLL (transformers' own loss) on the
    # examples that update drew (step 0, process 0).
    gen = torch.Generator().manual_seed((42 * 1_000_003 + 0) * 1_009 + 1)
    pick = torch.randint(1500, (8,), generator=gen).tolist()
    tokenizer = AutoTokenizer.from_pretrained(root / "sft" / "model")
    items = tokenize_sft(tokenizer, load_sft_examples(paths["sft"]), max_length=128)
    assert len(items) == 1500
    batch = collate_sft([items[j] for j in pick], tokenizer.pad_token_id)
    labels = batch["input_ids"].masked_fill(~batch["loss_mask"], -100)
    model = AutoModelForCausalLM.from_pretrained(root / "sft" / "model")
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=labels).loss.item()
    first = metrics(root / "ptx")[0]
    assert first["loss/ptx_avg"] == pytest.approx(want, abs=1e-5)


def test_a_safe_rlhf_score_model_critic_takes_its_score_row(world_sft):
    # A safe-rlhf score model (backbone under .model, score_head with score_dim outputs): the
    # critic copies the backbone and row score_index of the head, bias included.
    from safedpo.evaluate.scorers import SafeRLHFScoreModelScorer
    from safedpo.models.loading import load_model_and_tokenizer
    from safedpo.train.ppo_lagrangian import _load_critic

    _, root, paths = world_sft
    lm, tokenizer = load_model_and_tokenizer(str(root / "sft"))
    torch.manual_seed(0)
    score_model = torch.nn.Module()
    score_model.model = lm.model
    score_model.score_head = torch.nn.Linear(lm.config.hidden_size, 2)
    scorer = object.__new__(SafeRLHFScoreModelScorer)
    scorer.model, scorer.score_index, scorer.tokenizer, scorer.name = \
        score_model, 1, tokenizer, "cost:beaver"
    critic = _load_critic(ppo_config(root, paths, "unused"), scorer, tokenizer)
    ids = torch.tensor([[5, 9, 12, 7]])
    pos = torch.arange(4)[None]
    with torch.no_grad():
        hidden = lm.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                          position_ids=pos).last_hidden_state
        want = hidden @ score_model.score_head.weight[1] + score_model.score_head.bias[1]
        got = critic(ids, torch.ones_like(ids), pos)
    close(got, want.numpy())
