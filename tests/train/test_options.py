"""Trainer options: one SGD step equals a hand-made gradient step, momentum, learning-rate
schedules with warmup, gradient checkpointing changes nothing, tensorboard logging."""

import json
import math
import warnings

import pytest
import torch
from helpers import make_pairs, metrics, tiny_config, tiny_model

from safedpo.data.tokenization import collate_pairs, tokenize_pairs
from safedpo.logprobs import sequence_logps
from safedpo.losses import dpo_loss
from safedpo.models.loading import load_model_and_tokenizer
from safedpo.train.loop import train


@pytest.mark.parametrize("max_grad_norm", [None, 1e-3], ids=["unclipped", "clipped"])
def test_one_sgd_step_is_minus_lr_times_the_dpo_gradient(tmp_path, max_grad_norm):
    from safetensors.torch import load_file

    path = tiny_model(tmp_path)
    lr = 0.1
    train(tiny_config(tmp_path, path, loss_type="dpo", max_steps=1, learning_rate=lr,
                      max_grad_norm=max_grad_norm), make_pairs())
    # The same step by hand: loss = mean DPO loss over the 4 pairs, reference = initial model.
    model, tok = load_model_and_tokenizer(path)
    b = collate_pairs(tokenize_pairs(tok, make_pairs(), max_length=64), tok.pad_token_id)
    logps = sequence_logps(model.train(), b["input_ids"], b["attention_mask"], b["loss_mask"])
    ref = logps.detach()
    dpo_loss(logps[:4], logps[4:], ref[:4], ref[4:], beta=0.1)[0].mean().backward()
    norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    assert norm > 1e-2  # so that 1e-3 really clips: the step is lr * 1e-3 long
    scale = 1.0 if max_grad_norm is None else max_grad_norm / norm
    trained = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    logged = metrics(tmp_path / "run")[0]
    if max_grad_norm:
        assert logged["grad_norm"] == pytest.approx(norm, rel=1e-4)  # before clipping, as TRL
    for name, p in model.named_parameters():
        if name in trained:
            assert torch.allclose(trained[name], p.detach() - lr * scale * p.grad,
                                  atol=1e-7), name


def test_sgd_momentum_matters_from_step_two(tmp_path):
    path = tiny_model(tmp_path)
    train(tiny_config(tmp_path, path, out="m0", max_steps=3), make_pairs())
    train(tiny_config(tmp_path, path, out="m9", max_steps=3, momentum=0.9), make_pairs())
    a, b = metrics(tmp_path / "m0"), metrics(tmp_path / "m9")
    assert a[1]["loss"] == pytest.approx(b[1]["loss"], abs=1e-7)  # step 2 sees one update
    assert a[2]["loss"] > b[2]["loss"] + 1e-5  # momentum carries the first gradient on


@pytest.mark.parametrize("schedule,expected", [
    ("linear", [0.0, 1.0, 2 / 3, 1 / 3]),
    ("cosine", [0.0, 1.0, 0.75, 0.25]),
    ("constant", [0.0, 1.0, 1.0, 1.0]),
])
def test_schedules_with_warmup(tmp_path, schedule, expected):
    cfg = tiny_config(tmp_path, tiny_model(tmp_path), max_steps=4, warmup_ratio=0.25,
                      lr_scheduler_type=schedule, learning_rate=0.01)
    train(cfg, make_pairs())
    lrs = [r["learning_rate"] / 0.01 for r in metrics(tmp_path / "run")]
    assert lrs == pytest.approx(expected, abs=1e-9)


def test_gradient_checkpointing_changes_nothing(tmp_path):
    from safedpo.train.runtime import load_policy as _load_policy

    path = tiny_model(tmp_path)
    model, _, _ = _load_policy(tiny_config(tmp_path, path, gradient_checkpointing=True))
    assert model.is_activation_checkpointing  # it is really on
    train(tiny_config(tmp_path, path, out="plain", max_steps=3), make_pairs())
    train(tiny_config(tmp_path, path, out="ckpt", max_steps=3, gradient_checkpointing=True),
          make_pairs())
    a, b = metrics(tmp_path / "plain"), metrics(tmp_path / "ckpt")
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], abs=1e-6)
    saved = json.loads((tmp_path / "ckpt" / "model" / "config.json").read_text())
    assert saved.get("use_cache", True) is True  # generation stays fast after training


def test_epochs_and_steps(tmp_path):
    cfg = tiny_config(tmp_path, tiny_model(tmp_path), max_steps=-1, num_train_epochs=1.5,
                      per_device_train_batch_size=3)
    summary = train(cfg, make_pairs())
    # 4 pairs, batch 3: 2 steps per epoch (the last batch wraps around), 1.5 epochs -> 3 steps.
    assert (summary["steps_per_epoch"], summary["global_step"]) == (2, 3)
    assert [r["epoch"] for r in metrics(tmp_path / "run")] == [0.5, 1.0, 1.5]


def test_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = tiny_config(tmp_path, tiny_model(tmp_path), report_to=["tensorboard"], max_steps=1)
    train(cfg, make_pairs())
    assert list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert math.isfinite(metrics(tmp_path / "run")[0]["loss"])


def test_bf16_without_support_falls_back_to_float32(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine supports bf16")
    monkeypatch.setattr("safedpo.train.runtime.cpu_supports_bf16", lambda: False)
    cfg = tiny_config(tmp_path, tiny_model(tmp_path), bf16=True, max_steps=1, loss_type="dpo")
    with pytest.warns(UserWarning, match="bf16"):
        train(cfg, make_pairs())
    assert metrics(tmp_path / "run")[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_bf16_autocast_on_a_cpu_with_native_bf16(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    monkeypatch.setattr("safedpo.train.runtime.cpu_supports_bf16", lambda: True)
    model = tiny_model(tmp_path)
    losses = {}
    for bf16 in (False, True):
        cfg = tiny_config(tmp_path / str(bf16), model, bf16=bf16, max_steps=2, loss_type="dpo")
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # no fall-back warning
            train(cfg, make_pairs())
        losses[bf16] = [r["loss"] for r in metrics(tmp_path / str(bf16) / "run")]
    # Step 1: policy == reference gives ln 2 exactly in both precisions. Step 2 ran under CPU
    # autocast: bf16 rounding moves the loss a little, but not far.
    assert losses[True][0] == pytest.approx(math.log(2), abs=1e-6)
    assert 1e-6 < abs(losses[True][1] - losses[False][1]) < 5e-2


def test_shared_prompt_trains_like_two_sequences_per_pair(tmp_path):
    """share_prompt (on by default for Llama) changes the compute, not the math: the same
    steps, losses and weights as two sequences per pair, to float32 rounding."""
    from safetensors.torch import load_file

    path = tiny_model(tmp_path)
    runs = {}
    for share in (True, False):
        out = f"share-{share}"
        train(tiny_config(tmp_path, path, out=out, max_steps=3, share_prompt=share,
                          precompute_ref_log_probs=share), make_pairs())
        runs[share] = (metrics(tmp_path / out),
                       load_file(str(tmp_path / out / "model" / "model.safetensors")))
    (m1, w1), (m2, w2) = runs[True], runs[False]
    assert [r["step"] for r in m1] == [1, 2, 3]
    for a, b in zip(m1, m2):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-5)
        assert a["num_tokens"] == b["num_tokens"]  # the same work is counted
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-5
    assert m1[-1]["rewards/margins"] != pytest.approx(0.0, abs=1e-4)  # the policy moved


def test_a_model_without_shared_prompts_says_why_and_trains(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    from safedpo.models.loading import load_model_and_tokenizer

    llama = tiny_model(tmp_path)
    _, tok = load_model_and_tokenizer(llama)
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2,
                               n_positions=64)).save_pretrained(gpt2)
    tok.save_pretrained(gpt2)
    summary = train(tiny_config(tmp_path, str(gpt2), max_steps=1), make_pairs())
    err = capsys.readouterr().err
    assert "share_prompt: two sequences per pair instead (model type 'gpt2' is not among " \
           "those tested" in err
    assert summary["global_step"] == 1 and summary["model_dir"]
