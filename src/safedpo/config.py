"""One typed training config (TRL field names) and its one resolver.

A config is resolved from an ordered list of ``Layer``s, later ones winning: the defaults
(the dataclass), a YAML file, a method's own keys (compare/sweep/SACPO/demo), the command
line. ``resolve`` checks every key and value once, before any model loads (``validate``:
ranges, ``loss_type`` against ``LOSSES``, ``view`` against the data views, ``loss_kwargs``
against the loss function's signature, ``column_map`` against the PKU-SafeRLHF names).

The resolved config is written to every run dir as ``config.yaml``, so a run can be repeated
with ``safedpo train --config RUN_DIR/config.yaml``. Every field's help text is its metadata;
``add_config_options`` turns each field into a documented command-line option.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from safedpo.data.sources import OPTIONAL_COLUMNS, REQUIRED_COLUMNS
from safedpo.data.transform import check_view


def _f(default: Any, help: str) -> Any:
    """A dataclass field with its CLI help text."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything a training run needs. Defaults follow the paper / TRL's DPOConfig."""

    # --- model ---
    model_name_or_path: str | None = _f(
        None, "policy to train: hub id, local dir, a .gguf file or dir (with gguf_file)")
    ref_model_name_or_path: str | None = _f(
        None, "reference model; None = the initial policy (adapter disabled with use_peft)")
    trust_remote_code: bool = _f(False, "allow model code from the hub (off unless asked)")
    gguf_file: str | None = _f(None, "GGUF file name inside model_name_or_path, if any")
    dtype: str | None = _f(
        None, "dtype to load weights in: float32, bfloat16, float16, auto; None = float32")
    prompt_template: str | None = _f(
        None, "None/'auto': chat template if the tokenizer has one, else safe-rlhf's "
        "'BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:'; 'chat'; or any text with {prompt}")
    # --- data ---
    dataset: str | None = _f(
        None, "preference (train) or SFT (sft) data: .jsonl/.json/.parquet/.csv, a "
        "save_to_disk dir, or a hub id")
    dataset_split: str = _f("train", "split to read")
    dataset_config: str | None = _f(None, "hub dataset config name")
    column_map: dict[str, str] | None = _f(
        None, "PKU-SafeRLHF name -> the column in your data, e.g. {prompt: question}")
    view: str = _f(
        "safedpo", "pairs to build: safedpo (keep/swap/drop), helpful, harmless, safebetter")
    keep_both_unsafe: bool = _f(
        False, "keep rows where both responses are unsafe (ablation; = both_unsafe: keep)")
    both_unsafe: str = _f(
        "drop", "view safedpo, rows with two unsafe responses: drop (the paper), keep (the "
        "ablation, margin 0) or by_severity (the less severe answer is chosen, margin "
        "both_unsafe_delta * (s_l - s_w); equal or missing severities dropped); see "
        "docs/margins.md")
    skip_invalid: bool = _f(False, "skip (and count) invalid rows instead of stopping")
    prompt_column: str = _f("prompt", "sft: prompt column")
    response_column: str = _f("response", "sft: response column")
    max_length: int | None = _f(512, "max tokens of prompt + response (None = no limit)")
    max_prompt_length: int | None = _f(
        None, "max prompt tokens, cut from the left first (None = only max_length applies)")
    # --- loss ---
    loss_type: str = _f("safedpo", "loss: any key of safedpo.losses.LOSSES (safedpo, dpo, ...)")
    beta: float = _f(0.1, "KL strength beta (scales the log-ratios)")
    delta: float = _f(10.0, "SafeDPO margin Delta >= 0 (not multiplied by beta)")
    delta_by_severity: dict[int, float] = _f(
        {}, "Delta per severity level (0..3) of the pair's UNSAFE answer, e.g. {1: 2, 3: 20}; "
        "with delta_by_category the largest matching value wins, unmatched pairs get delta")
    delta_by_category: dict[str, float] = _f(
        {}, "Delta per harm category of the pair's UNSAFE answer, e.g. {Violence: 20}; several "
        "categories: the largest; names must occur in the data")
    both_unsafe_delta: float = _f(
        1.0, "both_unsafe: by_severity: margin per severity level of gap (Delta_sev)")
    adaptive_delta_target: float | None = _f(
        None, "adaptive per-category Delta (Cat-DPO style): the target implicit-reward margin "
        "on each category's harmful pairs; None = off. Delta_c <- clip(Delta_c + "
        "adaptive_delta_lr * (target - mean margin_c), 0, adaptive_delta_max) every step")
    adaptive_delta_lr: float = _f(0.1, "adaptive Delta: step size eta of the update")
    adaptive_delta_max: float = _f(20.0, "adaptive Delta: upper clip Delta_max")
    loss_kwargs: dict[str, Any] = _f({}, "extra keyword arguments for the loss function")
    rpo_alpha: float | None = _f(
        None, "weight of an NLL term on the chosen response (RPO); None = off")
    logps_average: bool = _f(False, "mean instead of sum of response token log-probs")
    share_prompt: bool = _f(
        True, "run each pair's prompt once: one [prompt, chosen, rejected] sequence whose mask "
        "hides the chosen answer from the rejected one (Llama and Qwen2 with sdpa or eager "
        "attention; other models get two sequences per pair, with a notice)")
    # --- optimisation ---
    output_dir: str = _f("runs/train", "run dir: config, metrics, checkpoints, final model")
    overwrite_output_dir: bool = _f(
        False, "replace a previous run's results in output_dir (else it is an error)")
    seed: int = _f(42, "seed for init, data order and dropout")
    learning_rate: float = _f(1e-6, "peak learning rate")
    num_train_epochs: float = _f(3.0, "epochs (ignored when max_steps > 0)")
    max_steps: int = _f(-1, "optimizer steps; > 0 overrides num_train_epochs")
    per_device_train_batch_size: int = _f(8, "pairs (or examples) per device per micro-batch")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    optim: str = _f("adamw_torch", "optimizer: adamw_torch or sgd (with momentum)")
    momentum: float = _f(0.9, "sgd momentum")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.999, "AdamW beta2")
    weight_decay: float = _f(0.05, "weight decay (not on biases and norms)")
    lr_scheduler_type: str = _f("cosine", "cosine, linear or constant (after warmup)")
    warmup_ratio: float = _f(0.03, "share of steps with linear warmup")
    max_grad_norm: float | None = _f(1.0, "gradient clipping norm (None = off)")
    bf16: bool = _f(False, "bf16 mixed precision where the device supports it")
    gradient_checkpointing: bool = _f(False, "recompute activations to save memory")
    trim_heap: bool = _f(
        False, "give the heap's free pages back to the OS after every optimizer step (glibc "
        "malloc_trim): a lower peak RSS on a CPU for 5-20% fewer tokens/s (SmolLM2 + LoRA on "
        "2 cores, glibc's default heap: 2.43 instead of 2.62 GiB). The safedpo command's own "
        "heap setting (safedpo.heap) does more at no cost; docs/performance.md")
    disable_dropout: bool = _f(
        True, "set the model's dropout to 0 (as TRL does): the policy at step 0 then equals "
        "the reference exactly; lora_dropout still applies")
    # --- LoRA ---
    use_peft: bool = _f(False, "train a LoRA adapter; the reference is the adapter disabled")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha")
    lora_dropout: float = _f(0.05, "LoRA dropout")
    lora_target_modules: list[str] | None = _f(
        None, "module names to adapt, e.g. q_proj v_proj (None = all linear layers)")
    # --- reference log-probs ---
    precompute_ref_log_probs: bool = _f(
        False, "compute reference log-probs once before training and cache them on disk")
    ref_cache_dir: str | None = _f(
        None, "where cached reference log-probs live (None = OUTPUT_DIR/ref_cache)")
    # --- logging / saving ---
    logging_steps: int = _f(10, "log metrics every N optimizer steps")
    save_steps: int = _f(500, "save a checkpoint every N optimizer steps (0 = only at the end)")
    save_total_limit: int | None = _f(2, "keep at most N checkpoints (None = all)")
    report_to: list[str] = _f([], "trackers: tensorboard, wandb (empty = metrics.jsonl only)")
    resume_from_checkpoint: str | None = _f(
        None, "'latest' or a checkpoint dir: continue that run exactly")
    disable_tqdm: bool = _f(False, "no progress bar")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SafeRLHFConfig(TrainConfig):
    """Safe RLHF (``safedpo saferlhf``, PPO-Lagrangian): every TrainConfig field plus its own,
    as TRL's PPOConfig extends its TrainingArguments (names follow PPOConfig)."""

    reward_model_path: str | None = _f(
        None, "reward model (sequence classifier or safe-rlhf score model, dir or hub "
        "id; 'oracle' = the synthetic world's true reward); None = train one first (safedpo rm)")
    cost_model_path: str | None = _f(
        None, "cost model (cost > 0 = unsafe; same formats, 'oracle' too); "
        "None = train one first (safedpo cm)")
    score_model_overrides: dict[str, Any] = _f(
        {}, "config values for the reward/cost model runs it trains, e.g. "
        "{learning_rate: 1e-3, optim: adamw_torch}; the rest is this config's, except "
        "max_steps (they run num_train_epochs unless given)")
    response_length: int = _f(53, "max new tokens per rollout answer")
    temperature: float = _f(1.0, "sampling temperature of the rollouts")
    kl_coef: float = _f(0.05, "weight of the per-token KL penalty to the reference")
    cliprange: float = _f(0.2, "PPO ratio clip range epsilon")
    cliprange_value: float = _f(0.2, "value clip range around the rollout's values")
    vf_coef: float = _f(
        1.0, "weight of the value (critic) losses; the critics have their own optimizer, so "
        "critic_learning_rate is the knob that matters (safe-rlhf: 1, no weight)")
    critic_learning_rate: float = _f(
        5e-6, "peak learning rate of the critics' own optimizer and schedule (the policy's is "
        "learning_rate); each is clipped to max_grad_norm on its own (safe-rlhf: critic 5e-6, "
        "actor 1e-5)")
    critic_init: str = _f(
        "score_models", "where the reward/cost critics start: score_models (from the reward "
        "and cost models, as safe-rlhf; the policy's backbone with a zero head for 'oracle') "
        "or policy (both from the policy's backbone, zero head)")
    gamma: float = _f(1.0, "discount factor")
    lam: float = _f(0.95, "GAE lambda")
    num_ppo_epochs: int = _f(4, "passes over each rollout batch")
    num_mini_batches: int = _f(
        1, "mini-batches per rollout batch (optimizer steps per PPO epoch)")
    score_clip: float | None = _f(50.0, "clip reward and cost scores to +-this")
    cost_threshold: float = _f(0.0, "the constraint: mean episode cost <= this")
    lambda_init: float = _f(1.0, "initial Lagrange multiplier lambda >= 0")
    lambda_lr: float = _f(
        0.1, "step of lambda's gradient ascent per unit of constraint violation")
    lambda_max: float | None = _f(
        None, "upper bound on lambda (None = none; safe-rlhf's default too, its ppo-lag.sh "
        "script sets 5)")
    episode_cost_window_size: int = _f(
        128, "lambda follows the mean cost of the last N episodes (all processes), not of the "
        "current batch alone (safe-rlhf: 128)")
    ptx_coef: float = _f(
        0.0, "weight of an NLL term on SFT examples of ptx_dataset in the policy loss "
        "(safe-rlhf's ptx; 0 = off)")
    ptx_dataset: str | None = _f(
        None, "SFT data (prompt_column / response_column) for ptx_coef; same formats as dataset")


class ConfigError(ValueError):
    """A bad config key or value; the message names the key and where it came from."""


SETTINGS = (TrainConfig, SafeRLHFConfig)  # every settings type; each engine has one


@functools.cache
def fields_of(cls: type = TrainConfig) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


@functools.cache
def hints_of(cls: type = TrainConfig) -> dict[str, Any]:
    return typing.get_type_hints(cls)


FIELDS = fields_of(TrainConfig)


def field_help(name: str, cls: type = TrainConfig) -> str:
    return fields_of(cls)[name].metadata.get("help", "")


def strip_optional(tp) -> tuple[Any, bool]:
    """(inner type, allows None) for ``X | None``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), type(None) in typing.get_args(tp)
    return tp, False


def coerce(name: str, value: Any, where: str = "config", cls: type = TrainConfig) -> Any:
    """``value`` (from YAML or a CLI string) converted to the type of field ``name`` of ``cls``."""
    hint = hints_of(cls)[name]
    tp, optional = strip_optional(hint)
    origin = typing.get_origin(tp) or tp
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~")):
        if optional:
            return None
        if origin is list:  # report_to: none (TRL's spelling) = no trackers
            return []
        raise ConfigError(f"{where}: '{name}' cannot be None")
    try:
        if origin is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "yes", "1", "on"):
                return True
            if text in ("false", "no", "0", "off"):
                return False
            raise ValueError("expected true or false")
        if origin is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected an integer")
            if isinstance(value, str) and "e" in value.lower():  # 1e3
                return int(float(value))
            return int(value)
        if origin is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if origin is str:
            if isinstance(value, (list, dict)):
                raise ValueError("expected a string")
            return str(value)
        if origin is list:
            if isinstance(value, str):
                text = value.strip()
                parsed = load_yaml_text(text) if text.startswith("[") else \
                    [v.strip() for v in text.split(",") if v.strip()]
            elif isinstance(value, (list, tuple)):
                parsed = list(value)
            else:
                raise ValueError("expected a list")
            (item,) = typing.get_args(tp) or (str,)
            return [item(v) for v in parsed]
        if origin is dict:
            parsed = load_yaml_text(value) if isinstance(value, str) else value
            if not isinstance(parsed, dict):
                raise ValueError("expected a mapping like {a: 1}")
            return dict(parsed)
    except (ValueError, TypeError, yaml.YAMLError) as e:
        why = getattr(e, "problem", None) or e  # a YAML error's message without its marks
        raise ConfigError(
            f"{where}: bad value {value!r} for '{name}' ({hint}): {why}") from None
    return value


def parse_overrides(overrides: list[str], cls: type = TrainConfig) -> dict[str, str | list[str]]:
    """``["--beta", "0.05", "--use_peft", "--lora_target_modules", "q", "v", "--x=1"]``
    -> {key: raw value}. A flag without a value is ``true``; several values make a list."""
    out: dict[str, Any] = {}
    key = None
    for tok in overrides:
        if tok.startswith("--"):
            key, eq, val = tok[2:].partition("=")
            key = key.replace("-", "_")
            check_config_keys({key: None}, cls, "command line")
            out[key] = [val] if eq else []
        elif key is None:
            raise ConfigError(f"command line: expected --key before {tok!r}")
        else:
            out[key].append(tok)
    return {k: ("true" if not v else v[0] if len(v) == 1 else v) for k, v in out.items()}


@dataclass
class Layer:
    """TrainConfig values from one place (a file, a method, the command line); ``where``
    names it in errors. Values may be strings (the command line) or typed (YAML)."""
    where: str
    values: dict
    typed_by_user: bool = False  # the command line or code: only these may turn on remote code
    # Applies to runs of several engines (compare's base and command line): a key of another
    # engine's settings type is left out of a run whose type lacks it, not an error.
    shared: bool = False

    def for_settings(self, cls: type) -> "Layer":
        if not self.shared:
            return self
        foreign = {k for k in self.values if k not in fields_of(cls)
                   and any(k in fields_of(c) for c in SETTINGS)}
        return Layer(self.where, {k: v for k, v in self.values.items() if k not in foreign},
                     self.typed_by_user)


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one YAML mapping (PyYAML would keep the last one silently)."""

    def __init__(self, key, first, again):
        self.key, self.first_line, self.line = key, first.line + 1, again.line + 1
        super().__init__(None, None, f"key '{key}' appears twice (line {self.first_line} and "
                         f"line {self.line})", again)


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (a merge ``<<:`` may
    still be overridden by the mapping's own keys)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: SafeLoader says so below
                    continue
                if first is not key_node.start_mark:
                    raise DuplicateKeyError(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str):
    """``yaml.safe_load`` that refuses duplicate keys (``StrictLoader``)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader)


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from a file; a missing file is FileNotFoundError, anything else that
    is not a mapping of key: value (a key given twice included) is a ConfigError naming the
    file. Every config file of safedpo is read here."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = load_yaml_text(path.read_text())
    except DuplicateKeyError as e:
        raise ConfigError(f"{path}: line {e.line}: key '{e.key}' appears twice in the same "
                          f"mapping (first on line {e.first_line}); keep one") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"{path}: not a YAML file{line}: "
                          f"{getattr(e, 'problem', None) or e}; a config is 'key: value' lines, "
                          "e.g. configs/tiny-cpu.yaml") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value")
    return data


def file_layer(path: str | Path) -> Layer:
    return Layer(str(path), read_yaml(path))


def check_keys(data: dict, allowed, where: str, noun: str = "key") -> None:
    """Every key of ``data`` is in ``allowed``; else a ConfigError naming it and close ones."""
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            known = f" (allowed: {', '.join(allowed)})" if len(allowed) < 15 else ""
            raise ConfigError(f"{where}: unknown {noun} '{key}'{hint}{known}")


def check_config_keys(data: dict, cls: type, where: str, noun: str = "config key") -> None:
    """Every key of ``data`` is a field of ``cls``; a key of another engine's settings says
    which settings type has it."""
    for key in data:
        if key not in fields_of(cls):
            other = next((c for c in SETTINGS if key in fields_of(c)), None)
            if other is not None:
                raise ConfigError(f"{where}: '{key}' is a setting of {other.__name__}, not of "
                                  f"{cls.__name__}: Safe RLHF settings go to safedpo saferlhf, "
                                  "or to a compare method with engine: saferlhf")
    check_keys(data, fields_of(cls), where, noun=noun)


def resolve(layers: list[Layer], cls: type = TrainConfig) -> TrainConfig:
    """THE resolver: the defaults of ``cls`` (an engine's settings type: TrainConfig or
    SafeRLHFConfig), then each layer in order (later wins); every key and value checked
    (``validate``)."""
    merged: dict[str, Any] = {}
    for layer in (layer.for_settings(cls) for layer in layers):
        check_config_keys(layer.values, cls, layer.where)
        for key, value in layer.values.items():
            merged[key] = coerce(key, value, layer.where, cls)
            if key == "trust_remote_code" and merged[key] and not layer.typed_by_user:
                # A config file may come with a downloaded run: it must not run code on load.
                raise ConfigError(
                    f"{layer.where}: trust_remote_code: true is only taken from the command "
                    "line; pass --trust_remote_code true if you trust the model's code")
    config = cls(**merged)
    validate(config)
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                cls: type = TrainConfig, **values: Any) -> TrainConfig:
    """``cls`` (TrainConfig) from a YAML file (or defaults), then ``--key value`` overrides (a
    script's argv), then keyword ``values``. Unknown keys raise ConfigError naming the key."""
    layers = [file_layer(path)] if path is not None else []
    layers += [Layer("command line", parse_overrides(list(overrides or []), cls), True),
               Layer("keyword argument", values, True)]
    return resolve(layers, cls)


def add_config_options(parser, *, cls: type = TrainConfig, prefix: str = "",
                       skip: tuple[str, ...] = (), show_defaults: bool = True) -> None:
    """One documented ``--KEY`` option per field of ``cls`` (stored as ``prefix + KEY``, absent
    from the namespace unless given, so only what the user typed overrides a config file)."""
    for key, f in fields_of(cls).items():
        if key in skip:
            continue
        tp, _ = strip_optional(hints_of(cls)[key])
        origin = typing.get_origin(tp) or tp
        default = f.default_factory() if callable(f.default_factory) else f.default
        text = field_help(key, cls)
        text = f"{text} (default: {default!r})" if show_defaults else text
        kwargs: dict = {"default": argparse.SUPPRESS, "dest": prefix + key,
                        "help": text.replace("%", "%%")}
        if origin is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif origin is list:
            kwargs.update(nargs="+", metavar="ITEM")
        else:
            kwargs.update(metavar=getattr(origin, "__name__", "VALUE").upper())
        parser.add_argument(f"--{key}", **kwargs)


def args_layer(args: argparse.Namespace, prefix: str = "", cls: type = TrainConfig) -> Layer:
    """The command-line layer: the options of ``add_config_options`` that were given. One
    value of a list option stays a string, so 'a,b' splits as in a config file."""
    values = {}
    for key in fields_of(cls):
        if hasattr(args, prefix + key):
            value = getattr(args, prefix + key)
            values[key] = value[0] if isinstance(value, list) and len(value) == 1 else value
    return Layer("command line", values, typed_by_user=True)


DTYPES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16", "auto")
COLUMN_NAMES = REQUIRED_COLUMNS + OPTIONAL_COLUMNS


def check_output_place(output_dir: str) -> None:
    """output_dir is a folder of its own: not a filesystem root, not the home folder (a run
    replaces its files there and ``--overwrite_output_dir`` deletes them)."""
    out = Path(str(output_dir)).expanduser().resolve()
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no home folder known
        home = None
    what = "a filesystem root" if out == Path(out.anchor) else \
        "your home folder" if out == home else None
    if what:
        raise ConfigError(f"output_dir {output_dir!r} is {what}: a run writes (and with "
                          "--overwrite_output_dir replaces) files there; give it a folder of "
                          "its own, e.g. runs/NAME")


def validate(config: TrainConfig) -> None:
    """Every value check that needs neither the model nor the data; a ConfigError that
    names the field and what to use instead."""
    def bad(msg):
        raise ConfigError(msg)

    check_output_place(config.output_dir)
    if not 0 < config.beta < math.inf:  # NaN too
        bad(f"beta must be > 0 and finite, got {config.beta}")
    if not 0 <= config.delta < math.inf:
        bad(f"delta must be >= 0 and finite, got {config.delta}")
    if not config.learning_rate > 0:  # 0 trains a run that changes nothing
        bad(f"learning_rate must be > 0, got {config.learning_rate} (e.g. 1e-6 for a 7B "
            "model, 3e-3 for the tiny demo model)")
    if config.per_device_train_batch_size < 1 or config.gradient_accumulation_steps < 1:
        bad("per_device_train_batch_size and gradient_accumulation_steps must be >= 1")
    if config.optim not in ("adamw_torch", "sgd"):
        bad(f"optim must be adamw_torch or sgd, got {config.optim!r}")
    if config.lr_scheduler_type not in ("cosine", "linear", "constant"):
        bad("lr_scheduler_type must be cosine, linear or constant, "
            f"got {config.lr_scheduler_type!r}")
    if not 0 <= config.warmup_ratio < 1:
        bad(f"warmup_ratio must be in [0, 1), got {config.warmup_ratio}")
    if config.max_steps <= 0 and config.num_train_epochs <= 0:
        bad("set max_steps > 0 or num_train_epochs > 0")
    if config.max_length is not None and config.max_length < 2:
        bad(f"max_length must be >= 2, got {config.max_length}")
    if config.logging_steps < 1:
        bad(f"logging_steps must be >= 1, got {config.logging_steps}")
    unknown = set(config.report_to) - {"tensorboard", "wandb", "all", "none"}
    if unknown:
        bad(f"report_to: unknown tracker(s) {sorted(unknown)}; use tensorboard or wandb")
    if config.dtype is not None and config.dtype not in DTYPES:
        bad(f"dtype {config.dtype!r} is not a weight dtype; use one of {', '.join(DTYPES)} "
            "(or none = float32)")
    try:
        check_view(config.view, config.keep_both_unsafe, config.both_unsafe)
    except ValueError as e:
        bad(f"view: {e}")
    from safedpo.data.margins import check_margin_config  # the margin maps and modes

    try:
        check_margin_config(config)
    except ValueError as e:
        bad(str(e))
    if config.column_map:
        check_keys(config.column_map, COLUMN_NAMES, "column_map", noun="PKU-SafeRLHF column")
    if isinstance(config, SafeRLHFConfig):
        validate_saferlhf(config)
    from safedpo.losses import LOSSES, check_loss_kwargs  # heavy (torch): keeps --help fast

    if config.loss_type not in LOSSES:
        hint = " (Safe RLHF is an engine of its own: safedpo saferlhf, or engine: saferlhf " \
               "in a compare method)" if config.loss_type == "saferlhf" else ""
        bad(f"unknown loss_type '{config.loss_type}'; choose one of {', '.join(LOSSES)}{hint}")
    try:
        check_loss_kwargs(config.loss_type, config.loss_kwargs)
    except ValueError as e:
        bad(f"loss_kwargs: {e}")


def validate_saferlhf(config: SafeRLHFConfig) -> None:
    """The value checks of Safe RLHF's own settings."""
    def bad(msg):
        raise ConfigError(msg)

    if not (config.lambda_init >= 0 and config.lambda_lr >= 0):  # NaN too
        bad("lambda_init and lambda_lr must be >= 0 (lambda is a Lagrange multiplier), got "
            f"{config.lambda_init} and {config.lambda_lr}")
    if config.lambda_max is not None and not config.lambda_max >= 0:
        bad(f"lambda_max must be >= 0 or none (no bound), got {config.lambda_max}")
    if config.num_ppo_epochs < 1 or config.num_mini_batches < 1 or config.response_length < 1:
        bad("num_ppo_epochs, num_mini_batches and response_length must be >= 1")
    if not config.temperature > 0:
        bad(f"temperature must be > 0, got {config.temperature}")
    for name in ("kl_coef", "vf_coef", "cliprange", "cliprange_value"):
        if not getattr(config, name) >= 0:
            bad(f"{name} must be >= 0, got {getattr(config, name)}")
    for name in ("gamma", "lam"):
        if not 0 <= getattr(config, name) <= 1:
            bad(f"{name} must be in [0, 1], got {getattr(config, name)}")
    if config.score_clip is not None and not config.score_clip > 0:
        bad(f"score_clip must be > 0 or none (no clipping), got {config.score_clip}")
    for name in ("kl_coef", "vf_coef", "cliprange", "cliprange_value", "temperature",
                 "cost_threshold", "lambda_init", "lambda_lr", "score_clip"):
        value = getattr(config, name)
        if value is not None and not math.isfinite(value):
            bad(f"{name} must be a finite number, got {value}")
    if config.episode_cost_window_size < 1:
        bad("episode_cost_window_size must be >= 1")
    if config.lambda_max is not None and config.lambda_max < config.lambda_init:
        bad(f"lambda_max ({config.lambda_max}) must be >= lambda_init ({config.lambda_init})")
    if config.critic_init not in ("score_models", "policy"):
        bad(f"critic_init must be score_models or policy, got {config.critic_init!r}")
    if not config.critic_learning_rate >= 0:
        bad(f"critic_learning_rate must be >= 0, got {config.critic_learning_rate}")
    if not config.ptx_coef >= 0:
        bad(f"ptx_coef must be >= 0, got {config.ptx_coef}")
    if config.ptx_coef > 0 and not config.ptx_dataset:
        bad("ptx_coef > 0 needs ptx_dataset (SFT examples for the NLL term)")


# Keys that say where and how often a run reports and saves, not what it computes: a resumed
# run may change them, and a comparison's reuse key leaves them out.
BOOKKEEPING_KEYS = ("output_dir", "overwrite_output_dir", "disable_tqdm", "report_to",
                    "logging_steps", "save_steps", "save_total_limit", "resume_from_checkpoint",
                    "trim_heap")


def resume_changes(old: dict[str, Any], new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """{key: (old value, new value)} of the settings that differ between a run's saved config
    (``old``, as read from its config.yaml) and the config resuming it, bookkeeping keys aside.
    A key the old config lacks (written by an older version) counts as its default."""
    defaults = type(new)().to_dict()
    changed = {}
    for key, value in new.to_dict().items():
        if key in BOOKKEEPING_KEYS:
            continue
        before = coerce(key, old[key], "config.yaml", type(new)) if key in old else defaults[key]
        if before != value:
            changed[key] = (before, value)
    return changed


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
