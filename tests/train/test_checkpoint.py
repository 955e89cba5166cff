"""Checkpoints: interrupt (signal) at step 10 + resume to 20 equals 20 straight steps; keep the
newest save_total_limit; a non-finite loss stops with an error and keeps the last good one."""

import json
import os
import signal

import pytest
from helpers import make_pairs, metrics, tiny_config, tiny_model

from safedpo.losses import LOSSES
from safedpo.train.checkpoint import find_checkpoint, list_checkpoints
from safedpo.train.loop import train


@pytest.fixture
def dropout_model(tmp_path):
    """Tiny Llama with attention dropout, so exact resume also needs the RNG state."""
    path = tiny_model(tmp_path)
    cfg = json.loads((tmp_path / "tiny" / "config.json").read_text())
    cfg["attention_dropout"] = 0.2
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(cfg))
    return path


def six_pairs():
    pairs = make_pairs()
    return pairs + pairs[:2]


def config(tmp_path, model, out, **kw):
    # AdamW + cosine with warmup: the optimizer and scheduler states both matter.
    values = dict(max_steps=20, per_device_train_batch_size=2, optim="adamw_torch",
                  learning_rate=3e-3, lr_scheduler_type="cosine", warmup_ratio=0.2,
                  weight_decay=0.01, disable_dropout=False)
    return tiny_config(tmp_path, model, out=out, **{**values, **kw})


def losses(run_dir):
    rows = metrics(run_dir)
    return [r["step"] for r in rows], [r["loss"] for r in rows]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_then_resume_equals_straight_run(tmp_path, dropout_model, signum):
    from safetensors.torch import load_file

    train(config(tmp_path, dropout_model, "straight"), six_pairs())

    def interrupt(metrics):
        if metrics["step"] == 10:
            os.kill(os.getpid(), signum)

    cut = config(tmp_path, dropout_model, "cut", save_steps=4, save_total_limit=2)
    first = train(cut, six_pairs(), callbacks=[interrupt])
    assert first["interrupted"] and first["global_step"] == 10
    assert not (tmp_path / "cut" / "model").exists()
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["step-8", "step-10"]
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "cut" / "checkpoints").iterdir())

    cut.resume_from_checkpoint = "latest"
    second = train(cut, six_pairs())
    assert second["global_step"] == 20 and not second["interrupted"]

    steps, resumed = losses(tmp_path / "cut")
    assert steps == list(range(1, 21))
    _, straight = losses(tmp_path / "straight")
    assert resumed == pytest.approx(straight, abs=1e-6)
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    # Dropout is really on (without it step 1 differs), so the resumed steps needed the RNG.
    train(config(tmp_path, dropout_model, "no-dropout", disable_dropout=True, max_steps=1),
          six_pairs())
    assert losses(tmp_path / "no-dropout")[1][0] != pytest.approx(straight[0], abs=1e-4)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    calls = []

    def nan_from_step_3(pc, pr, rc, rr, cu, ru, *, beta, **_):
        calls.append(1)
        losses, r_c, r_r = LOSSES["dpo"](pc, pr, rc, rr, cu, ru, beta=beta)
        return (losses * float("nan") if len(calls) >= 3 else losses), r_c, r_r

    monkeypatch.setitem(LOSSES, "nan_test", nan_from_step_3)
    cfg = tiny_config(tmp_path, tiny_model(tmp_path), loss_type="nan_test", max_steps=6,
                      save_steps=2, logging_steps=5)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 3.*step-2"):
        train(cfg, make_pairs())
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-2"]
    assert not (tmp_path / "run" / "model").exists()


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="has none"):
        find_checkpoint(tmp_path, "latest")
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        find_checkpoint(tmp_path, str(tmp_path))


def test_lora_checkpoint_holds_only_the_adapter_and_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    model = tiny_model(tmp_path)
    lora = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                lora_target_modules=["q_proj", "v_proj"], max_steps=6)
    train(config(tmp_path, model, "straight", **lora), six_pairs())

    def interrupt(metrics):
        if metrics["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    cut = config(tmp_path, model, "cut", save_steps=100, **lora)
    assert train(cut, six_pairs(), callbacks=[interrupt])["global_step"] == 3
    saved = load_file(str(list_checkpoints(tmp_path / "cut")[-1] / "model.safetensors"))
    adapter = load_file(str(tmp_path / "straight" / "model" / "adapter_model.safetensors"))
    # layers x (q, v) x (A, B): the adapter's tensors and nothing of the base model
    assert saved and all("lora_" in k for k in saved) and len(saved) == len(adapter)
    cut.resume_from_checkpoint = "latest"
    train(cut, six_pairs())
    assert losses(tmp_path / "cut")[1] == pytest.approx(losses(tmp_path / "straight")[1], abs=1e-6)


def test_resuming_an_older_checkpoint_discards_the_later_ones(tmp_path):
    model = tiny_model(tmp_path)

    def interrupt(metrics):
        if metrics["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)

    cut = config(tmp_path, model, "cut", max_steps=6, save_steps=2, save_total_limit=3,
                 logging_steps=1)
    train(cut, six_pairs(), callbacks=[interrupt])
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["step-2", "step-4", "step-5"]
    cut.resume_from_checkpoint = str(tmp_path / "cut" / "checkpoints" / "step-2")

    def stop_at_3(metrics):
        if metrics["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.warns(UserWarning, match=r"removed the later checkpoint\(s\) step-4, step-5 of"):
        train(cut, six_pairs(), callbacks=[stop_at_3])
    # step-4 and step-5 belonged to the abandoned continuation; 'latest' is this run's again.
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["step-2", "step-3"]
    assert find_checkpoint(tmp_path / "cut", "latest").name == "step-3"
    assert losses(tmp_path / "cut")[0] == [1, 2, 3]
