"""TrainConfig: YAML + overrides typed by field, clear errors, shipped configs, CLI options."""

import pytest
from helpers import CONFIGS

from safedpo.config import (
    FIELDS,
    ConfigError,
    SafeRLHFConfig,
    TrainConfig,
    fields_of,
    load_config,
    parse_overrides,
)


def test_overrides_are_typed_by_field():
    c = load_config(None, ["--beta", "0.05", "--max_steps", "7", "--use_peft",
                           "--bf16", "false", "--lora_target_modules", "q_proj", "v_proj",
                           "--report_to=tensorboard", "--max_length", "none",
                           "--loss_type", "bso_sba", "--loss_kwargs", "{lam: 0.2, s: 4}",
                           "--learning_rate", "1e-5",
                           "--rpo_alpha", "0.5"])
    assert c.beta == 0.05 and isinstance(c.beta, float)
    assert c.max_steps == 7 and isinstance(c.max_steps, int)
    assert c.use_peft is True and c.bf16 is False
    assert c.lora_target_modules == ["q_proj", "v_proj"]
    assert c.report_to == ["tensorboard"]
    assert c.max_length is None
    assert c.loss_kwargs == {"lam": 0.2, "s": 4}
    assert c.learning_rate == 1e-5 and c.rpo_alpha == 0.5


def test_comma_list_and_dashes():
    c = load_config(None, ["--lora-target-modules", "q_proj,k_proj", "--max-prompt-length", "9"])
    assert c.lora_target_modules == ["q_proj", "k_proj"] and c.max_prompt_length == 9


def test_yaml_then_overrides_then_keywords(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("beta: 0.2\ndelta: 5\nloss_type: dpo\nlora_target_modules: [a, b]\n")
    c = load_config(path, ["--delta", "2"], seed=3)
    assert (c.beta, c.delta, c.loss_type, c.seed) == (0.2, 2.0, "dpo", 3)
    assert c.lora_target_modules == ["a", "b"]
    assert isinstance(c.delta, float)


def test_unknown_key_names_it_and_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'bta'.*beta"):
        load_config(None, ["--bta", "0.1"])
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rat: 1e-5\n")
    with pytest.raises(ConfigError, match=rf"{path}.*'learning_rat'.*learning_rate"):
        load_config(path)


def test_bad_values_are_errors():
    with pytest.raises(ConfigError, match="'max_steps'"):
        load_config(None, ["--max_steps", "1.5"])
    with pytest.raises(ConfigError, match="'use_peft'"):
        load_config(None, ["--use_peft", "maybe"])
    with pytest.raises(ConfigError, match="'beta' cannot be None"):
        load_config(None, ["--beta", "none"])
    with pytest.raises(ConfigError, match="delta must be >= 0"):
        load_config(None, ["--delta", "-1"])
    with pytest.raises(ConfigError, match="optim"):
        load_config(None, ["--optim", "adam"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config("nope.yaml")


def test_report_to_none_is_an_empty_list():
    assert load_config(None, ["--report_to", "none"]).report_to == []


def test_parse_overrides_flag_and_list():
    assert parse_overrides(["--use_peft", "--lora_target_modules", "a", "b"]) == \
        {"use_peft": "true", "lora_target_modules": ["a", "b"]}


def test_every_field_has_help():
    assert all(f.metadata.get("help") for f in FIELDS.values())


TRAIN_CONFIGS = ["tiny-cpu.yaml", "pku-safedpo-7b-zero3.yaml", "lora-1gpu.yaml",
                 "dpo-helpful.yaml", "dpo-harmless.yaml", "dpo-safebetter.yaml"]


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_shipped_configs_load(name):
    assert isinstance(load_config(CONFIGS / name), TrainConfig)


def test_paper_config_values():
    c = load_config(CONFIGS / "pku-safedpo-7b-zero3.yaml")
    assert (c.loss_type, c.beta, c.delta, c.num_train_epochs, c.learning_rate) == \
        ("safedpo", 0.1, 10.0, 3.0, 1e-6)
    assert (c.lr_scheduler_type, c.warmup_ratio, c.weight_decay) == ("cosine", 0.03, 0.05)
    assert (c.per_device_train_batch_size, c.max_length, c.bf16) == (8, 512, True)
    assert c.dataset == "PKU-Alignment/PKU-SafeRLHF-30K"


def test_baseline_configs_views():
    views = {n: load_config(CONFIGS / f"dpo-{n}.yaml") for n in ("helpful", "harmless",
                                                                   "safebetter")}
    assert {n: (c.view, c.loss_type) for n, c in views.items()} == {
        "helpful": ("helpful", "dpo"), "harmless": ("harmless", "dpo"),
        "safebetter": ("safebetter", "dpo")}


def test_cli_options_cover_every_field_and_parse(capsys):
    from safedpo.cli import build_parser
    from safedpo.cli.train import config_from_args

    argv = ["train", "--beta", "0.05", "--use_peft", "--lora_target_modules", "q", "v",
            "--max_length", "none"]
    args = build_parser(argv).parse_args(argv)
    c = config_from_args(args)
    assert (c.beta, c.use_peft, c.lora_target_modules, c.max_length) == (0.05, True, ["q", "v"],
                                                                        None)
    assert c.delta == TrainConfig().delta  # not given: the default
    with pytest.raises(SystemExit):
        build_parser(["train", "--help"]).parse_args(["train", "--help"])
    text = capsys.readouterr().out
    missing = [k for k in FIELDS if f"--{k}" not in text]
    assert not missing
    assert "KL strength beta" in text
    assert "--kl_coef" not in text  # PPO options are saferlhf's only
    with pytest.raises(SystemExit):
        build_parser(["saferlhf", "--help"]).parse_args(["saferlhf", "--help"])
    text = capsys.readouterr().out
    assert [k for k in fields_of(SafeRLHFConfig) if f"--{k}" not in text] == []


@pytest.mark.parametrize("values, message", [
    ({"dtype": "f32"}, "dtype 'f32' is not a weight dtype; use one of"),
    ({"num_ppo_epochs": 0}, "num_ppo_epochs, num_mini_batches and response_length must be >= 1"),
    ({"response_length": 0}, "num_ppo_epochs, num_mini_batches and response_length must be >= 1"),
    ({"temperature": 0}, "temperature must be > 0, got 0.0"),
    ({"lambda_lr": -1}, "lambda_init and lambda_lr must be >= 0"),
    ({"lambda_init": float("nan")}, "lambda_init and lambda_lr must be >= 0"),
    ({"lambda_max": -1}, "lambda_max must be >= 0 or none"),
    ({"kl_coef": -0.5}, "kl_coef must be >= 0, got -0.5"),
    ({"kl_coef": "nan"}, "kl_coef must be >= 0, got nan"),
    ({"kl_coef": "inf"}, "kl_coef must be a finite number, got inf"),
    ({"vf_coef": -1}, "vf_coef must be >= 0, got -1.0"),
    ({"cliprange": -0.2}, "cliprange must be >= 0, got -0.2"),
    ({"cliprange_value": -0.2}, "cliprange_value must be >= 0, got -0.2"),
    ({"cost_threshold": "nan"}, "cost_threshold must be a finite number, got nan"),
    ({"cost_threshold": "-inf"}, "cost_threshold must be a finite number, got -inf"),
    ({"lambda_lr": "inf"}, "lambda_lr must be a finite number, got inf"),
    ({"gamma": 1.5}, "gamma must be in [0, 1], got 1.5"),
    ({"lam": -0.1}, "lam must be in [0, 1], got -0.1"),
    ({"lam": "nan"}, "lam must be in [0, 1], got nan"),
    ({"score_clip": -5}, "score_clip must be > 0 or none"),
    ({"temperature": "nan"}, "temperature must be > 0, got nan"),
    ({"beta": "nan"}, "beta must be > 0 and finite, got nan"),
    ({"delta": "inf"}, "delta must be >= 0 and finite, got inf"),
])
def test_validation_messages(values, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, cls=SafeRLHFConfig, **values)
    assert message in str(err.value)
