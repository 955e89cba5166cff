"""Baselines on one interface: config resolution, SACPO's stages, the Delta sweep, and
``safedpo compare`` end to end (train, evaluate, report, reuse) on a tiny model and a handful
of synthetic-world pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import CONFIGS, metrics, read_jsonl, tiny_model

from safedpo.cli import main
from safedpo.config import ConfigError
from safedpo.losses import LOSSES
from safedpo.pipelines.compare import load_plan, run_plan

N_PAIRS = 8  # rows in the tiny training file; every view but safedpo keeps all of them


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny synthetic-world dataset and a tiny (hidden 32) model covering its words."""
    from safedpo.world import World

    root = tmp_path_factory.mktemp("world")
    paths = World(seed=0).write_dataset(root / "data", n_pairs=N_PAIRS, n_test_pairs=4, n_sft=4)
    texts = []
    for row in read_jsonl(paths["train"]):
        texts += [row["prompt"], row["response_0"], row["response_1"]]
    texts += [r["prompt"] for r in read_jsonl(paths["eval_prompts"])]
    model = tiny_model(root, "model", texts)
    return {"model": str(model), "train": str(paths["train"]),
            "prompts": str(paths["eval_prompts"])}


def tiny_args(world, out, *extra):
    """Command-line options that make any config a 1-step CPU run on the tiny world."""
    return ["--output_dir", str(out), "--model_name_or_path", world["model"],
            "--dataset", world["train"], "--max_steps", "1",
            "--per_device_train_batch_size", str(N_PAIRS), "--logging_steps", "1",
            "--learning_rate", "0.01", "--optim", "adamw_torch", "--warmup_ratio", "0",
            "--bf16", "false", "--gradient_checkpointing", "false", "--max_length", "64",
            "--max_prompt_length", "32", "--save_steps", "0", "--disable_tqdm", *extra]


# --- config resolution (nothing trains) --------------------------------------------------------

def _first(plan, name):
    return next(m for m in plan.methods if m.name == name)


def test_compare_pku_config_resolves_to_the_paper_methods():
    plan = load_plan("compare", CONFIGS / "compare-pku.yaml")
    got = {m.name: [(s.config().view, s.config().loss_type, s.config().beta, s.config().delta)
                    for s in m.stages] for m in plan.methods}
    assert got == {
        "dpo_helpful": [("helpful", "dpo", 0.1, 10.0)],
        "dpo_harmless": [("harmless", "dpo", 0.1, 10.0)],
        "dpo_safebetter": [("safebetter", "dpo", 0.1, 10.0)],
        "sacpo": [("helpful", "dpo", 0.1, 10.0), ("harmless", "dpo", 0.025, 10.0)],
        "safedpo": [("safedpo", "safedpo", 0.1, 10.0)],
        "bso_sba": [("safedpo", "bso_sba", 0.1, 30.0)],
    }
    assert plan.helpful == "dpo_helpful" and plan.reference
    assert plan.evaluation["scorers"][:2] == ["reward:PKU-Alignment/beaver-7b-unified-reward",
                                              "cost:PKU-Alignment/beaver-7b-unified-cost"]
    sacpo = _first(plan, "sacpo").stages[1].config()
    assert sacpo.model_name_or_path == sacpo.ref_model_name_or_path \
        == str(Path("runs/compare-pku/sacpo/helpful/model"))
    # BSO's loss_kwargs are accepted by its loss: the SBA value at policy == reference on a
    # safe/unsafe pair with C = 30 is [0.2 e^36 - 1.2 e^-6 + 1] / 0.96.
    bso = _first(plan, "bso_sba").stages[0].config()
    lp = torch.zeros(1, dtype=torch.float64)
    loss, _, _ = LOSSES[bso.loss_type](lp, lp, lp, lp, torch.tensor([False]), torch.tensor([True]),
                                       beta=bso.beta, delta=bso.delta, **bso.loss_kwargs)
    expected = (0.2 * torch.exp(torch.tensor(36.0, dtype=torch.float64))
                - 1.2 * torch.exp(torch.tensor(-6.0, dtype=torch.float64)) + 1) / 0.96
    assert torch.allclose(loss, expected.reshape(1), rtol=1e-12)


def test_layer_precedence_file_base_inline_command_line():
    # compare-tiny: the method files are paper-scale, base makes them tiny, each keeps its view.
    plan = load_plan("compare", CONFIGS / "compare-tiny.yaml", output_dir="out")
    c = _first(plan, "dpo_harmless").stages[0].config()
    assert (c.view, c.learning_rate, c.bf16, c.max_length, c.output_dir) == \
        ("harmless", 3e-3, False, 128, str(Path("out/dpo_harmless")))
    # Stage keys of the compare method (harmless beta 0.1) beat the sacpo file's (0.025); a
    # method's own keys beat its config file (BSO's C = 30 -> 0.5); the command line beats all.
    assert _first(plan, "sacpo").stages[1].config().beta == 0.1
    assert load_plan("sacpo", CONFIGS / "sacpo.yaml").methods[0].stages[1].config().beta == 0.025
    assert _first(plan, "bso_sba").stages[0].config().delta == 0.5
    plan = load_plan("compare", CONFIGS / "compare-tiny.yaml", overrides=["--beta", "0.05"])
    assert {s.config().beta for m in plan.methods for s in m.stages} == {0.05}


def test_sweep_config_makes_one_run_per_delta():
    plan = load_plan("sweep", CONFIGS / "sweep-delta.yaml", deltas=[0, 2.5, 20])
    assert [m.name for m in plan.methods] == ["delta_0", "delta_2.5", "delta_20"]
    assert [m.stages[0].config().delta for m in plan.methods] == [0.0, 2.5, 20.0]
    assert {m.stages[0].config().loss_type for m in plan.methods} == {"safedpo"}
    assert len(load_plan("sweep", CONFIGS / "sweep-delta.yaml").methods) == 5  # config's list


def test_bad_configs_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods:\n  a: {config: %s, betta: 0.2}\n" % (CONFIGS / "tiny-cpu.yaml"))
    with pytest.raises(ConfigError, match=r"bad.yaml: methods.a: unknown key 'betta'.*beta"):
        load_plan("compare", bad).methods[0].stages[0].config()
    bad.write_text("methods: {a: {config: %s}}\nevaluaton: {}\n" % (CONFIGS / "tiny-cpu.yaml"))
    with pytest.raises(ConfigError, match="unknown key 'evaluaton'"):
        load_plan("compare", bad)
    # Methods must start from the same reference: a per-method model is refused.
    bad.write_text("methods:\n  a: {config: %s}\n  b: {config: %s, model_name_or_path: other}\n"
                   % (CONFIGS / "tiny-cpu.yaml", CONFIGS / "tiny-cpu.yaml"))
    with pytest.raises(ConfigError, match="model_name_or_path"):
        run_plan(load_plan("compare", bad, output_dir=str(tmp_path / "o")), log=lambda m: None)
    assert main(["compare", "--config", str(tmp_path / "missing.yaml")]) == 2


# --- SACPO -------------------------------------------------------------------------------------

def _mean_chosen_logps(model_path, view, world, max_length=64, max_prompt_length=32):
    """Mean summed log-prob of the chosen responses of ``view``'s pairs under a saved model."""
    from safedpo.data import load_pairs
    from safedpo.data.tokenization import collate_pairs, tokenize_pairs
    from safedpo.logprobs import sequence_logps
    from safedpo.models.loading import load_trained

    model, tok, template = load_trained(model_path)
    pairs, _ = load_pairs(world["train"], view=view)
    items = tokenize_pairs(tok, pairs, prompt_template=template, max_length=max_length,
                           max_prompt_length=max_prompt_length)
    batch = collate_pairs(items, tok.pad_token_id)
    with torch.no_grad():
        logps = sequence_logps(model, batch["input_ids"], batch["attention_mask"],
                               batch["loss_mask"])
    return logps[:len(pairs)].mean().item(), len(pairs)


def test_sacpo_stage2_starts_from_stage1_with_stage1_as_reference(world, tmp_path):
    out = tmp_path / "sacpo"
    assert main(["sacpo", "--config", str(CONFIGS / "sacpo.yaml"), *tiny_args(world, out),
                 "--precompute_ref_log_probs", "false"]) == 0
    s1 = (out / "helpful" / "config.yaml").read_text()
    import yaml

    c1, c2 = yaml.safe_load(s1), yaml.safe_load((out / "harmless" / "config.yaml").read_text())
    assert (c1["view"], c1["beta"], c1["model_name_or_path"]) == ("helpful", 0.1, world["model"])
    stage1_model = str(out / "helpful" / "model")
    # Stage 2 trains from stage 1's weights, against stage 1 as the reference, with its own beta.
    assert (c2["view"], c2["loss_type"], c2["beta"]) == ("harmless", "dpo", 0.025)
    assert c2["model_name_or_path"] == c2["ref_model_name_or_path"] == stage1_model
    step1 = metrics(out / "harmless")[0]
    assert step1["step"] == 1
    # Before stage 2's first update the policy IS its reference: implicit rewards are 0 ...
    assert abs(step1["rewards/chosen"]) < 1e-5 and abs(step1["rewards/rejected"]) < 1e-5
    # ... and its log-probs are stage 1's final log-probs (one batch = all N_PAIRS pairs),
    # measurably different from the SFT model's, so starting from the base would fail here.
    final1, n = _mean_chosen_logps(stage1_model, "harmless", world)
    base, _ = _mean_chosen_logps(world["model"], "harmless", world)
    assert n == N_PAIRS
    assert step1["logps/chosen"] == pytest.approx(final1, abs=1e-3)
    assert abs(final1 - base) > 1e-2


# --- compare and sweep end to end --------------------------------------------------------------

def _count_calls(monkeypatch):
    from safedpo.evaluate import runner
    from safedpo.train import loop as engine

    calls = {"train": 0, "evaluate": 0}
    real_train, real_eval = engine.train, runner.evaluate

    def train(*a, **k):
        calls["train"] += 1
        return real_train(*a, **k)

    def evaluate(*a, **k):
        calls["evaluate"] += 1
        return real_eval(*a, **k)

    monkeypatch.setattr(engine, "train", train)
    monkeypatch.setattr(runner, "evaluate", evaluate)
    return calls


def test_compare_trains_evaluates_reports_and_reuses(world, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    argv = ["compare", "--config", str(CONFIGS / "compare-tiny.yaml"),
            "--methods", "dpo_helpful", "sacpo", "safedpo", *tiny_args(world, out),
            "--prompts", world["prompts"], "--max_prompts", "4"]
    calls = _count_calls(monkeypatch)
    assert main(argv) == 0
    # SACPO's stage 1 has DPO-HELPFUL's exact config: trained once, shared.
    assert calls == {"train": 3, "evaluate": 4}  # dpo_helpful, sacpo stage 2, safedpo; + ref
    report = json.loads((out / "report.json").read_text())
    assert {r["label"] for r in report["rows"]} == {"reference", "dpo_helpful", "sacpo", "safedpo"}
    # The roles for the paper's normalization (reference 0, DPO-HELPFUL 10) are passed on; a
    # 1-step tiny model answers like the reference, so the report falls back to raw reward.
    assert (report["reference"], report["helpful"]) == ("reference", "dpo_helpful")
    training = report["training"]
    assert set(training) == {"dpo_helpful", "sacpo", "safedpo"}
    assert training["sacpo"]["stages"]["helpful"]["run_dir"] == str(out / "dpo_helpful")
    assert training["sacpo"]["global_step"] == 2 and training["safedpo"]["global_step"] == 1
    assert training["sacpo"]["train_seconds"] == pytest.approx(
        sum(s["train_seconds"] for s in training["sacpo"]["stages"].values()))
    md = (out / "report.md").read_text()
    assert "## Training time" in md and "| sacpo |" in md
    assert (out / "frontier.png").stat().st_size > 5000
    cfg = json.loads((out / "compare_summary.json").read_text())["methods"]["safedpo"]
    assert Path(cfg["run_dir"], "config.yaml").is_file()

    # Second invocation: nothing retrained or re-evaluated, files untouched.
    weights = sorted((out / "safedpo" / "model").glob("*.safetensors"))
    before = {p: p.stat().st_mtime_ns for p in [*weights, out / "safedpo" / "eval" / "compare"
                                                / "metrics.json"]}
    calls.update(train=0, evaluate=0)
    assert main(argv) == 0
    assert calls == {"train": 0, "evaluate": 0}
    assert {p: p.stat().st_mtime_ns for p in before} == before

    # Other evaluation settings (3 prompts instead of 4): re-evaluated, not retrained.
    calls.update(train=0, evaluate=0)
    assert main([*argv[:-1], "3"]) == 0
    assert calls == {"train": 0, "evaluate": 4}
    # SACPO alone finds its stage 1 (DPO-HELPFUL's run) on disk: nothing to train again.
    calls.update(train=0, evaluate=0)
    assert main([*argv[:4], "sacpo", *argv[7:-1], "3"]) == 0
    assert calls == {"train": 0, "evaluate": 0}


def test_sweep_over_delta(world, tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", str(CONFIGS / "sweep-delta-tiny.yaml"), "--deltas", "0",
                 "5", *tiny_args(world, out), "--prompts", world["prompts"],
                 "--max_prompts", "2"]) == 0
    import yaml

    for name, delta in (("delta_0", 0.0), ("delta_5", 5.0)):
        c = yaml.safe_load((out / name / "config.yaml").read_text())
        assert (c["loss_type"], c["view"], c["delta"]) == ("safedpo", "safedpo", delta)
    report = json.loads((out / "report.json").read_text())
    assert {r["label"] for r in report["rows"]} == {"reference", "delta_0", "delta_5"}
    assert not report["normalized"]  # no DPO-HELPFUL run: raw mean reward
    # Same data, same seed, same first batch: the losses at step 1 differ only by Delta.
    m0, m5 = (metrics(out / n)[0] for n in ("delta_0", "delta_5"))
    assert m0["logps/chosen"] == m5["logps/chosen"]
    assert m5["loss"] > m0["loss"]


def test_compare_reevaluates_when_the_prompts_file_or_a_scorer_model_changes(world, tmp_path,
                                                                             monkeypatch):
    from safedpo.pipelines.compare import eval_inputs

    lines = Path(world["prompts"]).read_text().splitlines(keepends=True)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(lines[:3]))
    out = tmp_path / "cmp"
    argv = ["compare", "--config", str(CONFIGS / "compare-tiny.yaml"), "--methods", "safedpo",
            *tiny_args(world, out), "--prompts", str(prompts)]
    calls = _count_calls(monkeypatch)
    assert main(argv) == 0
    assert calls == {"train": 1, "evaluate": 2}  # safedpo and the reference
    calls.update(train=0, evaluate=0)
    assert main(argv) == 0
    assert calls == {"train": 0, "evaluate": 0}
    # Same path, same settings, other prompts: the old evaluations are stale.
    prompts.write_text("".join(lines[3:6]))
    calls.update(train=0, evaluate=0)
    assert main(argv) == 0
    assert calls == {"train": 0, "evaluate": 2}
    rows = (out / "safedpo" / "eval" / "compare" / "generations.jsonl").read_text()
    assert json.loads(lines[3])["prompt"] in rows and json.loads(lines[0])["prompt"] not in rows

    # A local reward/cost model is fingerprinted too (a hub id and the world are names only).
    cost = tmp_path / "cost"
    cost.mkdir()
    (cost / "model.safetensors").write_bytes(b"old")
    settings = {"prompts": "world", "scorers": ["refusal", f"cost:{cost}",
                                                "reward:PKU-Alignment/beaver-7b-unified-reward"]}
    before = eval_inputs(settings)
    assert before["prompts"] is None
    assert before["scorer_models"]["reward:PKU-Alignment/beaver-7b-unified-reward"] == \
        "PKU-Alignment/beaver-7b-unified-reward"
    (cost / "model.safetensors").write_bytes(b"new weights")
    after = eval_inputs(settings)
    assert after["scorer_models"][f"cost:{cost}"] != before["scorer_models"][f"cost:{cost}"]


def test_an_interrupted_stage_resumes_from_its_checkpoint(world, tmp_path, monkeypatch):
    """SIGTERM after step 1 of 3: run_plan stops with the hint; the same plan run again goes
    on from the step-1 checkpoint and ends with the weights of an uninterrupted run."""
    import os
    import signal

    from safetensors.torch import load_file

    from safedpo.train import loop as engine

    def plan(out):
        args = tiny_args(world, out, "--per_device_train_batch_size", "4", "--max_steps", "3")
        return load_plan("compare", CONFIGS / "compare-tiny.yaml", overrides=args,
                         output_dir=str(out), only=["dpo_helpful"])

    real_train = engine.train
    calls = []

    def train(config, pairs=None, *, callbacks=()):
        calls.append(config.resume_from_checkpoint)
        stop = [lambda m: os.kill(os.getpid(), signal.SIGTERM)] if len(calls) == 1 else []
        return real_train(config, pairs, callbacks=stop)

    monkeypatch.setattr(engine, "train", train)
    out = tmp_path / "cmp"
    with pytest.raises(KeyboardInterrupt, match="interrupted at step 1"):
        run_plan(plan(out))
    summary = run_plan(plan(out))  # the same plan again: goes on
    assert calls == [None, "latest"]
    assert summary["methods"]["dpo_helpful"]["global_step"] == 3
    run_dir = out / "dpo_helpful"
    steps = [r["step"] for r in metrics(run_dir)]
    assert steps == [1, 2, 3]
    assert not (run_dir / "compare_started.json").exists()

    run_plan(plan(tmp_path / "whole"))  # the third call: not stopped, from scratch
    assert calls == [None, "latest", None]
    resumed = load_file(run_dir / "model" / "model.safetensors")
    whole = load_file(tmp_path / "whole" / "dpo_helpful" / "model" / "model.safetensors")
    assert resumed.keys() == whole.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=0)


def test_compare_replaces_a_run_it_did_not_make_only_with_force(world, tmp_path, capsys):
    """OUT/NAME holding a `safedpo train` run (no compare key file) is refused in one line;
    --force replaces it (and then it is compare's own run, reused next time)."""
    out = tmp_path / "cmp"
    run = out / "safedpo"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    (run / "config.yaml").write_text("beta: 0.1\n")
    (run / "train_summary.json").write_text('{"global_step": 7, "train_seconds": 1.0}')
    argv = ["compare", "--config", str(CONFIGS / "compare-tiny.yaml"), "--methods", "safedpo",
            *tiny_args(world, out)]
    config = tmp_path / "no_eval.yaml"  # compare-tiny without its evaluation: training only
    import yaml

    data = yaml.safe_load((CONFIGS / "compare-tiny.yaml").read_text())
    data.pop("evaluation", None)
    data["methods"] = {"safedpo": {"config": str(CONFIGS / "tiny-cpu.yaml")}}
    config.write_text(yaml.safe_dump(data))
    argv[2] = str(config)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("safedpo compare: error: ") and "\n" not in err
    assert str(run) in err and "--force" in err
    assert (run / "model" / "config.json").read_text() == "{}"
    assert main([*argv, "--force"]) == 0
    assert json.loads((run / "train_summary.json").read_text())["global_step"] == 1
    assert (run / "compare_key.json").is_file()
    capsys.readouterr()
    assert main(argv) == 0  # compare's own run now: reused
    assert json.loads(capsys.readouterr().out)["methods"]["safedpo"]["reused"] is True
