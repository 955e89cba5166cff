"""The one engine table: the CLI, compare and every runner's guard read it."""

import pytest
from helpers import CONFIGS

from safedpo.cli import COMMANDS
from safedpo.config import ConfigError, Layer, SafeRLHFConfig, TrainConfig, fields_of, load_config
from safedpo.pipelines import compare
from safedpo.train.engines import ENGINES, check_settings, engine, run_engine


def test_every_training_command_is_an_engine_with_its_help():
    assert set(ENGINES) == {"sft", "train", "rm", "cm", "saferlhf"}
    for name, e in ENGINES.items():
        assert COMMANDS[name] == ("safedpo.cli.train", e.help)
    assert ENGINES["saferlhf"].settings is SafeRLHFConfig
    assert all(ENGINES[n].settings is TrainConfig for n in ("sft", "train", "rm", "cm"))
    with pytest.raises(ConfigError, match="unknown engine 'ppo'; choose one of sft, train, rm, "
                                          "cm, saferlhf"):
        engine("ppo")


def test_safe_rlhf_settings_live_in_their_own_type():
    own = set(fields_of(SafeRLHFConfig)) - set(fields_of(TrainConfig))
    assert {"kl_coef", "cost_threshold", "lambda_lr", "reward_model_path",
            "score_model_overrides"} <= own
    assert own == set(SafeRLHFConfig.__annotations__)  # declared there, none in TrainConfig
    with pytest.raises(ConfigError, match="'kl_coef' is a setting of SafeRLHFConfig, not of "
                                          "TrainConfig"):
        load_config(None, kl_coef=0.1)
    assert load_config(None, cls=SafeRLHFConfig, kl_coef=0.1).kl_coef == 0.1
    with pytest.raises(ConfigError, match=r"unknown loss_type 'saferlhf'.*engine of its own"):
        load_config(None, loss_type="saferlhf")


def test_every_runner_refuses_another_engines_settings():
    ppo = SafeRLHFConfig()
    for name in ("sft", "train", "rm", "cm"):  # refused before anything loads
        with pytest.raises(ConfigError, match=f"engine {name} takes a TrainConfig, got a "
                                              r"SafeRLHFConfig \(run it with engine saferlhf\)"):
            run_engine(name, ppo)
    with pytest.raises(ConfigError, match="engine saferlhf takes a SafeRLHFConfig, got a "
                                          "TrainConfig"):
        run_engine("saferlhf", TrainConfig())
    check_settings("train", TrainConfig())  # the right type passes


def test_compare_gives_each_run_the_shared_keys_its_engine_reads(tmp_path):
    cli = Layer("command line", {"kl_coef": "0.3", "beta": "0.2"}, typed_by_user=True)
    plan = compare.load_plan("compare", CONFIGS / "compare-tiny.yaml", output_dir=str(tmp_path),
                             only=["saferlhf", "safedpo"], cli=cli)
    configs = {m.name: m.stages[0].config() for m in plan.methods}
    assert type(configs["saferlhf"]) is SafeRLHFConfig and configs["saferlhf"].kl_coef == 0.3
    assert type(configs["safedpo"]) is TrainConfig and configs["safedpo"].beta == 0.2
    with pytest.raises(ConfigError, match="'kl_coef' is read by no method of this comparison"):
        compare.load_plan("compare", CONFIGS / "compare-tiny.yaml", output_dir=str(tmp_path),
                          only=["safedpo"], cli=cli)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"methods:\n  x: {{engine: ppo, config: {CONFIGS / 'tiny-cpu.yaml'}}}\n")
    with pytest.raises(ConfigError, match="methods.x: engine: unknown engine 'ppo'"):
        compare.load_plan("compare", bad)
    bad.write_text(f"methods:\n  x: {{config: {CONFIGS / 'tiny-cpu.yaml'}, kl_coef: 0.1}}\n")
    with pytest.raises(ConfigError, match="'kl_coef' is a setting of SafeRLHFConfig"):
        compare.load_plan("compare", bad)


def test_the_reuse_key_names_the_engine():
    c = TrainConfig()
    assert compare.train_key(c, "sft")["config"]["engine"] == "sft"
    assert compare.train_key(c, "sft") != compare.train_key(c, "train")
