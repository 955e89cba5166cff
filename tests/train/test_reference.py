"""The reference: LoRA's adapter-disabled policy equals the base model; precomputed reference
log-probs are cached on disk, reused on a re-run, and invalidated by changed data or weights."""

import pytest
import torch
from helpers import TEXTS, make_pairs, metrics, pair_logps, tiny_config, tiny_model

import safedpo.train.objectives as engine
from safedpo.data.tokenization import collate_pairs, tokenize_pairs
from safedpo.data.types import SafetyPair
from safedpo.models.loading import load_model_and_tokenizer
from safedpo.train.loop import train


def test_lora_reference_is_the_base_model(tmp_path):
    from peft import PeftModel

    base_path = tiny_model(tmp_path)
    cfg = tiny_config(tmp_path, base_path, use_peft=True, lora_r=4, lora_alpha=8,
                      lora_dropout=0.0, learning_rate=0.5, max_steps=3)
    train(cfg, make_pairs())
    m = metrics(tmp_path / "run")
    # Step 1: adapter B = 0, policy == reference. Later the reference must stay the base.
    assert m[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert m[2]["rewards/margins"] > 1e-3
    adapter = tmp_path / "run" / "model"
    assert (adapter / "adapter_config.json").exists()
    assert (adapter / "adapter_model.safetensors").exists()
    assert not (adapter / "model.safetensors").exists()  # no second full copy

    base, tok = load_model_and_tokenizer(base_path)
    want = pair_logps(base, tok, make_pairs())
    peft_model = PeftModel.from_pretrained(load_model_and_tokenizer(base_path)[0], str(adapter))
    with peft_model.disable_adapter():
        disabled = pair_logps(peft_model, tok, make_pairs())
    enabled = pair_logps(peft_model, tok, make_pairs())
    assert torch.equal(disabled, want)
    assert (enabled - want).abs().max() > 1e-3
    # The policy's rewards/margins at step 3 are measured against exactly these base log-probs:
    # load_trained merges the adapter, giving the adapter-enabled numbers.
    from safedpo.models.loading import load_trained

    merged, _, _ = load_trained(tmp_path / "run")
    assert torch.allclose(pair_logps(merged, tok, make_pairs()), enabled, atol=1e-4)


def cache_files(cache):
    return sorted(p.name for p in cache.glob("ref_logps-*.safetensors"))


def test_reference_cache_reuse_and_invalidation(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    model = tiny_model(tmp_path)
    cache = tmp_path / "cache"
    pairs = make_pairs()
    train(tiny_config(tmp_path, model, out="live", loss_type="dpo"), pairs)
    train(tiny_config(tmp_path, model, out="first", loss_type="dpo",
                      precompute_ref_log_probs=True, ref_cache_dir=str(cache)), pairs)
    (name,) = cache_files(cache)
    cached = load_file(str(cache / name))
    base, tok = load_model_and_tokenizer(model)
    want = pair_logps(base, tok, pairs)
    assert torch.allclose(cached["chosen_sum"], want[:4], atol=1e-5)
    assert torch.allclose(cached["rejected_sum"], want[4:], atol=1e-5)
    b = collate_pairs(tokenize_pairs(tok, pairs, max_length=64), tok.pad_token_id)
    assert cached["chosen_count"].tolist() == b["loss_mask"][:4].sum(1).tolist()
    # Cached and live references train identically.
    live, first = metrics(tmp_path / "live"), metrics(tmp_path / "first")
    assert [r["loss"] for r in first] == pytest.approx([r["loss"] for r in live], abs=1e-6)

    # Re-run: the cache is reused, nothing is recomputed (a LoRA run's reference, the base
    # with the adapter disabled, has the same identity and reuses it too).
    def fail(*a, **k):
        raise AssertionError("reference log-probs recomputed")

    monkeypatch.setattr(engine, "_precompute", fail)
    train(tiny_config(tmp_path, model, out="again", loss_type="dpo",
                      precompute_ref_log_probs=True, ref_cache_dir=str(cache)), pairs)
    train(tiny_config(tmp_path, model, out="lora", loss_type="dpo", use_peft=True,
                      precompute_ref_log_probs=True, ref_cache_dir=str(cache)), pairs)
    assert cache_files(cache) == [name]
    monkeypatch.undo()

    # Changed data -> a new entry.
    changed = pairs[:3] + [SafetyPair("how do I bake bread", "I do not know", TEXTS[6], False,
                                      True)]
    train(tiny_config(tmp_path, model, out="data", loss_type="dpo",
                      precompute_ref_log_probs=True, ref_cache_dir=str(cache)), changed)
    assert len(cache_files(cache)) == 2
    # Changed truncation -> a new entry.
    train(tiny_config(tmp_path, model, out="trunc", loss_type="dpo", max_length=6,
                      precompute_ref_log_probs=True, ref_cache_dir=str(cache)), pairs)
    assert len(cache_files(cache)) == 3
    # Same path, new weights -> a new entry (the key hashes file contents, not the name).
    from safedpo.models.tiny import make_tiny_llama

    make_tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2, seed=1).save_pretrained(model)
    train(tiny_config(tmp_path, model, out="weights", loss_type="dpo",
                      precompute_ref_log_probs=True, ref_cache_dir=str(cache)), pairs)
    assert len(cache_files(cache)) == 4


def test_separate_reference_model(tmp_path):
    """ref_model_name_or_path: rewards are measured against that model from step 1."""
    policy = tiny_model(tmp_path, "policy")
    from safedpo.models.tiny import make_tiny_llama

    _, tok = load_model_and_tokenizer(policy)
    ref_path = tmp_path / "ref"
    ref_model = make_tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2, seed=5)
    ref_model.save_pretrained(ref_path)
    tok.save_pretrained(ref_path)
    cfg = tiny_config(tmp_path, policy, loss_type="dpo", ref_model_name_or_path=str(ref_path),
                      max_steps=1)
    train(cfg, make_pairs())
    got = metrics(tmp_path / "run")[0]
    pol = pair_logps(load_model_and_tokenizer(policy)[0], tok, make_pairs())
    ref = pair_logps(load_model_and_tokenizer(str(ref_path))[0], tok, make_pairs())
    assert got["rewards/chosen"] == pytest.approx(0.1 * (pol[:4] - ref[:4]).mean().item(),
                                                  abs=1e-5)
    assert got["rewards/rejected"] == pytest.approx(0.1 * (pol[4:] - ref[4:]).mean().item(),
                                                    abs=1e-5)
