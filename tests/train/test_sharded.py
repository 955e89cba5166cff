"""DeepSpeed ZeRO-2, ZeRO-3 and FSDP2 for real: ``accelerate launch`` with the CPU variants of
the shipped configs (configs/accelerate/cpu/: 2 processes, fp32, gloo) trains exactly as one
process with the same global batch (2 x 2 pairs = 1 x 4 pairs).

Each launch runs (tests/train/sharded_worker.py): a 4-step run with the reference precomputed by
the sharded policy and a checkpoint at step 2; a run resumed from that sharded checkpoint into
a new directory; under FSDP also a LoRA run. FSDP on CPU needs tests/train/fsdp_on_cpu.py (see
there: accelerate enables FSDP only on GPU-like devices); DeepSpeed needs nothing.

Tolerance 1e-5 (absolute): everything is fp32 and the runs do the same arithmetic except the
order of sums (the gradient of 2 processes' halves summed by an all-reduce, DeepSpeed's
flattened partitions); measured differences are about 1e-6 after 4 AdamW steps.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    CONFIGS,
    PKU_V1_SMALL,
    TESTS,
    make_pairs,
    metrics,
    read_jsonl,
    tiny_config,
    tiny_model,
    write_jsonl,
)
from safetensors.torch import load_file

from safedpo.cli import main as cli_main
from safedpo.config import ConfigError
from safedpo.models.loading import load_model_and_tokenizer
from safedpo.train.distributed import Request, check, describe, requested
from safedpo.train.loop import train

HERE = Path(__file__).resolve().parent  # sharded_worker.py and fsdp_on_cpu.py
CPU_CONFIGS = CONFIGS / "accelerate" / "cpu"
TOL = 1e-5
RAN = {"zero2": {"type": "DEEPSPEED", "zero_stage": 2, "num_processes": 2},
       "zero3": {"type": "DEEPSPEED", "zero_stage": 3, "num_processes": 2},
       "fsdp": {"type": "FSDP", "fsdp_version": 2, "num_processes": 2}}
COMMON = dict(max_steps=4, optim="adamw_torch", learning_rate=1e-2, save_steps=2,
              precompute_ref_log_probs=True)
# lora_dropout 0: 1 and 2 processes draw different dropout masks (disable_dropout keeps it).
LORA = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0,
            lora_target_modules=["q_proj", "v_proj"], max_steps=3, optim="adamw_torch",
            learning_rate=1e-2)
PROMPTS = ["how do I bake bread", "how do I pick a lock"]


def assert_same_metrics(got, want, exact=False):
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want):
        for key in ("loss", "rewards/margins", "grad_norm"):
            want = w[key] if exact else pytest.approx(w[key], abs=TOL)
            assert g[key] == want, (g["step"], key)


def assert_same_tensors(got: dict, want: dict, tol=TOL):
    assert set(want) <= set(got)  # DeepSpeed also writes the tied lm_head (a copy)
    for k in want:
        assert got[k].shape == want[k].shape, k  # gathered: full shapes, not shards
        assert (got[k] - want[k]).abs().max().item() <= tol, k


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The 1-process runs (4 pairs per step), and the tiny model both share."""
    tmp = tmp_path_factory.mktemp("one")
    model = tiny_model(tmp)
    train(tiny_config(tmp, model, out="full", per_device_train_batch_size=4, **COMMON),
          make_pairs() * 2)
    train(tiny_config(tmp, model, out="lora", per_device_train_batch_size=4, **LORA),
          make_pairs() * 2)
    return tmp, model


def launch(config: str, runs: list, cwd: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    for key in ("WORLD_SIZE", "ACCELERATE_USE_CPU"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(CPU_CONFIGS / config), str(HERE / "sharded_worker.py"), json.dumps(runs)],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("name", list(RAN))
def test_sharded_training_equals_one_process(name, one_process, tmp_path):
    if name.startswith("zero"):
        pytest.importorskip("deepspeed")  # make setup installs it
    one, model = one_process
    per_device = dict(per_device_train_batch_size=2)
    full = tiny_config(tmp_path, model, out="full", **per_device, **COMMON)
    resumed = tiny_config(tmp_path, model, out="resumed", **per_device, **COMMON,
                          resume_from_checkpoint=str(tmp_path / "full/checkpoints/step-2"))
    runs = [full.to_dict(), resumed.to_dict()]
    if name == "fsdp":
        runs.append(tiny_config(tmp_path, model, out="lora", **per_device, **LORA).to_dict())
    launch(f"{name}.yaml", runs, tmp_path)

    summary = json.loads((tmp_path / "full" / "train_summary.json").read_text())
    assert summary["distributed"] == RAN[name]
    assert_same_metrics(metrics(tmp_path / "full"), metrics(one / "full"))
    # The reference log-probs, computed once by the sharded policy, sharded over the data.
    (cache,) = (tmp_path / "full" / "ref_cache").glob("*.safetensors")
    assert_same_tensors(load_file(str(cache)), load_file(str(one / "full/ref_cache" / cache.name)))
    # model/ is one full safetensors model that reloads with the trained weights.
    saved = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    assert_same_tensors(saved, load_file(str(one / "full" / "model" / "model.safetensors")))
    reloaded, _ = load_model_and_tokenizer(str(tmp_path / "full" / "model"))
    assert_same_tensors(reloaded.state_dict(), saved, tol=0)
    # Resumed from the sharded step-2 checkpoint: the same steps 3-4 and the same weights.
    assert_same_metrics(metrics(tmp_path / "resumed"), metrics(tmp_path / "full")[2:], exact=True)
    assert_same_tensors(load_file(str(tmp_path / "resumed/model/model.safetensors")), saved, tol=0)
    if name == "fsdp":  # LoRA under FSDP: the adapter of one process
        assert_same_metrics(metrics(tmp_path / "lora"), metrics(one / "lora"))
        adapter = "model/adapter_model.safetensors"
        assert_same_tensors(load_file(str(tmp_path / "lora" / adapter)),
                            load_file(str(one / "lora" / adapter)))
    if name == "zero3":  # `safedpo eval` generates from the gathered model as from one process
        prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
        for run, out in ((tmp_path / "full", "eval"), (one / "full", "eval-one")):
            assert cli_main(["eval", "--model", str(run / "model"), "--prompts", str(prompts),
                             "--scorer", "refusal", "--max-new-tokens", "4", "--no-progress",
                             "--n-boot", "10", "--output-dir", str(tmp_path / out)]) == 0
        got, want = ([r["response"] for r in read_jsonl(tmp_path / d / "generations.jsonl")]
                     for d in ("eval", "eval-one"))
        assert got == want and len(got) == 2 and all(got)
    assert abs(metrics(one / "full")[-1]["rewards/margins"]) > 1e-3  # the policy moved


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp_on_cpu_stops_with_one_line_instead_of_training_as_ddp(tmp_path):
    """The user's command, without the test helper: accelerate resolves MULTI_CPU, so
    `safedpo train` refuses (it used to train as plain DDP, silently)."""
    model = tiny_model(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(CPU_CONFIGS / "fsdp.yaml"), "-m", "safedpo.cli", "train",
         "--model_name_or_path", model, "--dataset", str(PKU_V1_SMALL),
         "--output_dir", str(tmp_path / "run")],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert ("safedpo train: error: the launcher asked for FSDP on 2 processes but accelerate "
            "resolved MULTI_CPU: the installed accelerate turns a run into FSDP only on GPU-like "
            "devices") in proc.stderr
    assert not (tmp_path / "run" / "model").exists()


def fake_accelerator(kind, num_processes=2, fsdp_version=2):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    plugin = SimpleNamespace(fsdp_version=fsdp_version)
    return SimpleNamespace(distributed_type=DistributedType[kind], num_processes=num_processes,
                           state=SimpleNamespace(fsdp_plugin=plugin))


@pytest.mark.parametrize("env, want", [
    ({}, Request("NO", 1)),
    ({"WORLD_SIZE": "2"}, Request("DDP", 2)),
    ({"WORLD_SIZE": "4", "ACCELERATE_USE_DEEPSPEED": "true",
      "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, Request("DEEPSPEED", 4, 3)),
    ({"WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true"}, Request("FSDP", 2)),
])
def test_the_request_is_read_from_what_accelerate_launch_exports(env, want, monkeypatch):
    for key in ("WORLD_SIZE", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE",
                "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert requested() == want


def test_a_run_that_is_not_what_was_asked_for_stops(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    with pytest.raises(ConfigError, match="asked for DEEPSPEED on 2 processes but accelerate "
                                          "resolved MULTI_CPU: use_cpu: true"):
        check(fake_accelerator("MULTI_CPU"), Request("DEEPSPEED", 2, 3))
    with pytest.raises(ConfigError, match="started 2 processes but accelerate counts 1 "
                                          r"\(NO\): each process would train alone"):
        check(fake_accelerator("NO", num_processes=1), Request("DDP", 2))
    check(fake_accelerator("MULTI_CPU"), Request("DDP", 2))  # DDP on CPU is DDP
    check(fake_accelerator("DEEPSPEED"), Request("DEEPSPEED", 2, 3))

    from types import SimpleNamespace
    engine = SimpleNamespace(zero_optimization_stage=lambda: 2)
    with pytest.raises(ConfigError, match="asked for ZeRO stage 3 but DeepSpeed runs stage 2"):
        describe(fake_accelerator("DEEPSPEED"), engine, Request("DEEPSPEED", 2, 3))
    assert describe(fake_accelerator("DEEPSPEED"), engine, Request("DEEPSPEED", 2, 2)) == \
        {"type": "DEEPSPEED", "zero_stage": 2, "num_processes": 2}
    unsharded = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="parameters are not sharded"):
        describe(fake_accelerator("FSDP"), unsharded, Request("FSDP", 2))
    assert describe(fake_accelerator("NO", 1), unsharded, Request("NO", 1)) == \
        {"type": "NO", "num_processes": 1}
