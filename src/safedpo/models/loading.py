"""Loading models: any ``AutoModelForCausalLM`` (hub id, local dir, GGUF, peft adapter dir or
a safedpo run dir) with its tokenizer, and wrapping a policy in a LoRA adapter."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from safedpo.models.sources import (
    HUB_ID,
    PACKAGE_SCHEME,
    check_exists,
    resolve_model_source,
    run_model_dir,
)


class ModelFileError(OSError, ValueError):
    """A model's file that is there but cannot be read (a ``model.safetensors`` that is not
    one, a ``tokenizer.json`` that is not JSON); the message names the file. An OSError, as
    transformers' own loading errors, and a ValueError, so every command reports it in one
    line."""


# Files a tokenizer is read from, in the order transformers reads them.
TOKENIZER_JSON_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                        "tokenizer.json")


def _shown(path: Path) -> str:
    return f"{path} (a link to {path.resolve()})" if path.is_symlink() else str(path)


def _bad_safetensors(model_dir: Path, err: Exception) -> ModelFileError:
    """The error naming the ``*.safetensors`` file of ``model_dir`` that safetensors cannot
    read (``err``: what safetensors said)."""
    # safetensors: installed with transformers; only a bad weights file needs it here
    from safetensors import SafetensorError, safe_open

    bad = None
    if model_dir.is_dir():
        for path in sorted(model_dir.glob("*.safetensors")):
            try:
                with safe_open(str(path), framework="pt"):
                    pass
            except (SafetensorError, OSError):
                bad = path
                break
    what = _shown(bad) if bad else f"a *.safetensors file of {model_dir}"
    return ModelFileError(f"could not load model '{model_dir}': {what} is not a readable "
                          f"safetensors file ({' '.join(str(err).split())})")


def _bad_tokenizer(name: str, err: Exception) -> ModelFileError | None:
    """The error naming the tokenizer file of local dir ``name`` that is not valid JSON (or,
    when the JSON parses, the tokenizer.json the tokenizers library refused); None when no
    local file is to blame."""
    local = Path(name).expanduser()
    if not local.is_dir():
        return None
    for file in TOKENIZER_JSON_FILES:
        path = local / file
        if path.is_file():
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                return ModelFileError(f"could not load the tokenizer of '{name}': {_shown(path)} "
                                      f"is not valid JSON ({' '.join(str(e).split())})")
    if (local / "tokenizer.json").is_file() and not isinstance(err, json.JSONDecodeError):
        return ModelFileError(f"could not load the tokenizer of '{name}': "
                              f"{_shown(local / 'tokenizer.json')} is not a tokenizer the "
                              f"tokenizers library can read ({' '.join(str(err).split())})")
    return None


def resolve_dtype(dtype):
    """'float32' | 'bfloat16' | 'float16' | 'auto' | torch.dtype | None (= float32)."""
    if dtype is None:
        return torch.float32  # full-precision master weights; bf16 compute comes from autocast
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)} or 'auto'")
    return names[dtype]


def load_model_and_tokenizer(name_or_path: str, *, trust_remote_code: bool = False,
                             gguf_file: str | None = None, dtype=None,
                             base_model: str | None = None, base_gguf_file: str | None = None):
    """-> (model, tokenizer). ``name_or_path``: hub id, local model dir, GGUF (with
    ``gguf_file``), a peft adapter dir (its base is loaded and the adapter merged), or a
    safedpo run dir. The tokenizer gets a pad token (EOS) when it has none.
    An adapter's base: ``base_model``/``base_gguf_file`` when given, else the run's
    ``model_name_or_path``/``gguf_file`` when the adapter is a run's ``model/`` (next to its
    config.yaml), else the one adapter_config.json names (for a GGUF base peft records only
    the directory, so that one cannot load it)."""
    # transformers: slow to import (seconds); only loading a model needs it
    from transformers import AutoTokenizer

    name, gguf_file = resolve_model_source(str(name_or_path), gguf_file)
    check_exists(name, gguf_file)
    local = Path(name).expanduser()
    if local.is_dir():
        local = run_model_dir(local)
        name = str(local)
    kwargs = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        # The tokenizer first: a bad tokenizer file fails before the weights load.
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
        except Exception as e:  # a tokenizer file that is not JSON: name the file
            if isinstance(e, OSError) or type(e) not in (Exception, json.JSONDecodeError):
                raise  # only the JSON parser's and the tokenizers library's own errors
            bad = _bad_tokenizer(name, e)
            if bad is None:
                raise
            raise bad from e
        model = _load_model(name, gguf_file, trust_remote_code, dtype, base_model,
                            base_gguf_file)
    except ModelFileError:
        raise
    except OSError as e:
        raise OSError(f"could not load model '{name}' (local files or hub, offline?): {e}") from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out; any id works
    return model, tokenizer


def drop_gguf_marker(model) -> None:
    """transformers de-quantizes a GGUF file to plain float tensors on load, but leaves the
    model marked "quantized with gguf" (``hf_quantizer``, ``config.quantization_config``), and
    ``save_pretrained`` refuses such a model. The weights are plain: clear the marker, so the
    model saves (and reloads) as a normal one. A no-op for any other model."""
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is None or str(getattr(method, "value", method)).lower() != "gguf":
        return
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if "quantization_config" in vars(model.config):
        del model.config.quantization_config


def _load_model(name: str, gguf_file: str | None, trust_remote_code: bool, dtype,
                base_model: str | None = None, base_gguf_file: str | None = None):
    """The model at ``name`` (resolved); an adapter dir is merged into its base, which may
    itself be an adapter (a LoRA run started from a LoRA run, e.g. SACPO stage 2)."""
    # transformers: slow to import (seconds); only loading a model needs it
    # safetensors: installed with transformers
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    local = Path(name).expanduser()
    if not (local.is_dir() and (local / "adapter_config.json").exists()):
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        try:
            return AutoModelForCausalLM.from_pretrained(name, dtype=resolve_dtype(dtype),
                                                        trust_remote_code=trust_remote_code,
                                                        **kwargs)
        except SafetensorError as e:  # e.g. "header too large": a file that is not weights
            raise _bad_safetensors(local, e) from e
    # peft: only LoRA runs and adapter dirs need it (slow to import)
    from peft import PeftModel

    base_name, base_gguf = adapter_base(local, base_model, base_gguf_file)
    base_name, base_gguf = resolve_model_source(base_name, base_gguf)
    check_exists(base_name, base_gguf)
    if Path(base_name).expanduser().is_dir():
        base_name = str(run_model_dir(Path(base_name).expanduser()))
    base = _load_model(base_name, base_gguf, trust_remote_code, dtype)
    try:
        return PeftModel.from_pretrained(base, str(local)).merge_and_unload()
    except SafetensorError as e:
        raise _bad_safetensors(local, e) from e


def _run_settings(model_dir: Path) -> dict:
    """The config.yaml of the safedpo run whose ``model/`` is ``model_dir`` ({} if none)."""
    config = model_dir.parent / "config.yaml"
    if model_dir.name != "model" or not config.is_file():
        return {}
    # Written by the run itself (yaml.safe_dump) and only read for the base model's name;
    # config files a user writes go through safedpo.config.read_yaml (a level above this).
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def adapter_base(adapter_dir: Path, base_model: str | None = None,
                 base_gguf_file: str | None = None) -> tuple[str, str | None]:
    """-> (base model, gguf file) of a peft adapter dir: ``base_model`` when given; else, for
    a run's ``model/``, the run's ``model_name_or_path`` and ``gguf_file`` (portable, e.g. a
    ``pkg://`` GGUF source); else the base adapter_config.json names."""
    if base_model:
        return base_model, base_gguf_file
    settings = _run_settings(Path(adapter_dir))
    if settings.get("model_name_or_path"):
        return str(settings["model_name_or_path"]), settings.get("gguf_file")
    # peft: only LoRA runs and adapter dirs need it (slow to import)
    from peft import PeftConfig

    return PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path, None


def load_trained(path, *, dtype=None, trust_remote_code: bool = False):
    """-> (model in eval mode, tokenizer, prompt_template) from a run dir (``model/`` plus
    ``config.yaml``, whose prompt_template is used), a model dir or a peft adapter dir.
    A hub id loads as a plain model with prompt_template None. ``trust_remote_code`` comes
    only from the caller: a run dir may come from anyone, so its config.yaml cannot set it."""
    if str(path).startswith(PACKAGE_SCHEME) or str(path).lower().endswith(".gguf"):
        model, tokenizer = load_model_and_tokenizer(str(path), dtype=dtype)  # a base model
        return model.eval(), tokenizer, None
    path = Path(str(path)).expanduser()
    if not path.exists():
        if HUB_ID.match(str(path)) and not str(path).startswith((".", "/", "~")):
            model, tokenizer = load_model_and_tokenizer(
                str(path), dtype=dtype, trust_remote_code=trust_remote_code)
            return model.eval(), tokenizer, None
        raise FileNotFoundError(f"no trained model at {path}: path does not exist")
    model_dir = run_model_dir(path)
    if not ((model_dir / "config.json").exists() or (model_dir / "adapter_config.json").exists()):
        raise FileNotFoundError(
            f"no trained model at {path}: expected a run dir (model/ + config.yaml), a model "
            "dir (config.json) or a peft adapter dir (adapter_config.json)")
    # A run dir's config.yaml sits next to model/ (also when given model/ itself); a LoRA
    # run's base comes from it too (see adapter_base).
    settings = _run_settings(model_dir)
    model, tokenizer = load_model_and_tokenizer(
        str(model_dir), trust_remote_code=trust_remote_code, dtype=dtype)
    return model.eval(), tokenizer, settings.get("prompt_template")


def apply_lora(model, *, r: int, alpha: int, dropout: float, target_modules=None):
    """Wrap ``model`` in a trainable LoRA adapter (the base weights are frozen)."""
    # peft: only LoRA runs and adapter dirs need it (slow to import)
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                      target_modules=list(target_modules) if target_modules else "all-linear")
    return get_peft_model(model, lora)
