"""``safedpo compare``, ``safedpo sacpo`` and ``safedpo sweep``: baselines on one interface
(their command-line options: ``safedpo.cli.compare``).

compare
    Trains the listed methods from the same reference model, on the same data and seed,
    evaluates every one (and the reference) with the same prompts and scorers, and writes one
    report: table + helpfulness-vs-harmlessness plot (``safedpo.evaluate.write_report``) plus
    the training time of each method. A method whose resolved config (and input files) did not
    change since its last run is reused, not retrained; an evaluation likewise.
sacpo
    SACPO (Wachi et al., NeurIPS 2024, arXiv 2404.11049), "stepwise": DPO on the helpfulness
    preference, then DPO on the harmlessness preference starting FROM the stage-1 model and
    with the stage-1 model as the reference (the authors' code loads the stage-1 output and
    passes ``ref_model=None`` to TRL's DPOTrainer, which copies the initial policy). Each stage
    has its own beta; stage 2's beta plays the role of beta/lambda in the paper.
sweep
    One method trained at several values of Delta (``--deltas 0 2 5 10 20``), then evaluated
    and reported like ``compare``.

Config files (YAML). compare::

    output_dir: runs/compare-tiny
    base: {TrainConfig keys shared by every method: the reference model, data, seed, schedule}
    methods:
      dpo_helpful: {config: configs/dpo-helpful.yaml}            # one training run
      safedpo: {config: configs/tiny-cpu.yaml, delta: 10}        # ... with its own keys
      sacpo: {sacpo: configs/sacpo.yaml, harmless: {beta: 0.05}} # two stages
    evaluation: {prompts: world, scorers: [oracle, refusal], max_new_tokens: 32, ...}
    reference: true          # evaluate the reference model as well (helpfulness 0)
    helpful: dpo_helpful     # the method that defines helpfulness 10 (else: raw mean reward)

sweep: the same, with ``method: {config: ...}`` and ``deltas: [...]`` instead of ``methods``.
sacpo: ``output_dir``, ``base``, ``helpful: {config: ..., beta: ...}`` (stage 1) and
``harmless: {config: ..., beta: ...}`` (stage 2).

A method's TrainConfig, later layers winning: its ``config`` file, ``base``, the method's
own keys, then ``--key value`` options on the command line. ``output_dir`` is always
OUTPUT_DIR/NAME (SACPO: OUTPUT_DIR/NAME/helpful and .../harmless), so NAME is a plain name
(``check_method_name``); a run dir there that compare did not make (no compare_key.json /
compare_started.json, e.g. a ``safedpo train`` run) is replaced only with ``force``. A SACPO
stage: its ``config`` file, the sacpo file's ``base``, the compare ``base``, the stage's keys,
the compare method's keys for that stage, the command line. Relative paths to config
files are looked up from the working directory, then next to the file that names them.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import PartialState

from safedpo.config import (
    BOOKKEEPING_KEYS,
    ConfigError,
    Layer,
    SafeRLHFConfig,
    check_config_keys,
    check_keys,
    fields_of,
    parse_overrides,
    read_yaml,
    resolve,
)
from safedpo.evaluate import runner
from safedpo.evaluate.report import ReportSection, write_report
from safedpo.train.checkpoint import list_checkpoints, weights_fingerprint
from safedpo.train.engines import engine, run_engine

# evaluate() keyword arguments a config's `evaluation:` section may set.
EVAL_KEYS = ("prompts", "scorers", "split", "prompt_column", "max_prompts", "world_seed",
             "max_new_tokens", "max_prompt_length", "do_sample", "temperature", "top_p", "seed",
             "batch_size", "n_boot", "answers")
# Every method of a comparison must agree on these (same reference, data and seed).
_SAME = ("model_name_or_path", "ref_model_name_or_path", "gguf_file", "dataset",
         "dataset_split", "dataset_config", "seed")
_TOP = {
    "compare": ("output_dir", "base", "methods", "evaluation", "reference", "helpful", "title"),
    "sweep": ("output_dir", "base", "method", "deltas", "evaluation", "reference", "title"),
    "sacpo": ("output_dir", "base", "helpful", "harmless"),
}
KEY_FILE = "compare_key.json"  # in every run dir / eval dir this module produced
# The key of a training run that started and has not finished yet: if it matches when the
# stage runs again, the run goes on from its latest checkpoint.
STARTED_FILE = "compare_started.json"
# Names a method may not take: the reference's evaluation goes to OUTPUT_DIR/reference/eval,
# and the report files live in OUTPUT_DIR itself.
RESERVED_NAMES = ("reference", "compare_summary.json", "report.md", "report.json",
                  "frontier.png")


# --- config resolution ----------------------------------------------------------------------

def _find(path: str, near: Path | None) -> Path:
    """A config file named in another config: from the working directory, else next to it."""
    p = Path(path)
    if p.is_file() or p.is_absolute() or near is None:
        return p
    beside = near.parent / p
    return beside if beside.is_file() else p


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return value


def _file_layer(path: str, near: Path | None) -> Layer:
    p = _find(path, near)
    return Layer(str(p), read_yaml(p))


@dataclass
class Stage:
    """One training run of a method. ``after``: the stage whose model this one starts from
    and uses as its reference (SACPO stage 2)."""
    name: str
    layers: list[Layer]
    run_dir: Path
    after: "Stage | None" = None
    engine: str = "train"  # a name of safedpo.train.engines.ENGINES

    def config(self):
        forced: dict[str, Any] = {"output_dir": str(self.run_dir)}
        if self.after is not None:
            prev = str(self.after.run_dir / "model")
            forced.update(model_name_or_path=prev, ref_model_name_or_path=prev, gguf_file=None)
        return resolve([*self.layers, Layer("set by safedpo compare", forced)],
                       engine(self.engine).settings)


@dataclass
class Method:
    name: str
    stages: list[Stage]
    kind: str = "train"  # or "sacpo"

    @property
    def run_dir(self) -> Path:
        """The run dir of the final model."""
        return self.stages[-1].run_dir


@dataclass
class Plan:
    output_dir: Path
    methods: list[Method]
    evaluation: dict | None = None
    reference: bool = True
    helpful: str | None = None
    title: str | None = None


def _sacpo_stages(spec: dict, where: str, near: Path | None, base: list[Layer], cli: Layer,
                  out: Path, inline: dict | None = None) -> list[Stage]:
    """Stage 1 (helpful) and stage 2 (harmless) of SACPO from a sacpo config mapping.
    ``base``: outer base layers (a compare's), ``inline``: a compare method's per-stage keys."""
    check_keys(spec, _TOP["sacpo"], where)
    own_base = Layer(f"{where}: base", _mapping(spec.get("base"), f"{where}: base"))
    inline = inline or {}
    stages: list[Stage] = []
    for stage in ("helpful", "harmless"):
        s = dict(_mapping(spec.get(stage), f"{where}: {stage}"))
        if "config" not in s:
            raise ConfigError(f"{where}: '{stage}' needs 'config: FILE' (e.g. "
                              f"configs/dpo-{stage}.yaml)")
        layers = [_file_layer(s.pop("config"), near), own_base, *base,
                  Layer(f"{where}: {stage}", s),
                  Layer(f"{where}: {stage} (compare)", _mapping(inline.get(stage), stage)), cli]
        stages.append(Stage(stage, layers, out / stage, after=stages[-1] if stages else None))
    return stages


def check_method_name(name, where: str) -> str:
    """A method's name is its run dir under OUTPUT_DIR: one plain path component (not a path,
    not hidden, not ``..``), and not a name compare itself uses there."""
    if not isinstance(name, str):
        raise ConfigError(f"{where}: method name {name!r} must be text (quote it: "
                          f"'{name}': ...)")
    if not name.strip() or name.startswith(".") or ".." in name or name != name.strip() \
            or any(c in name for c in "/\\") or not name.isprintable():
        raise ConfigError(f"{where}: method name {name!r} must be a plain name (its run dir "
                          "is OUTPUT_DIR/NAME): one path component, without '/', '\\', '..', "
                          "spaces around it or control characters, not starting with '.', "
                          "e.g. safedpo_beta05")
    if name in RESERVED_NAMES:
        raise ConfigError(f"{where}: method name {name!r} is taken by compare itself "
                          f"(OUTPUT_DIR/reference/eval is the reference's evaluation; "
                          f"{', '.join(RESERVED_NAMES[1:])} are the report's files): rename "
                          "the method")
    return name


def _method(name: str, spec, where: str, near: Path | None, base: list[Layer], cli: Layer,
            out: Path) -> Method:
    spec = dict(_mapping(spec, where))
    if "sacpo" in spec:
        check_keys(spec, ("sacpo", "helpful", "harmless"), where)
        src = spec["sacpo"]
        if isinstance(src, str):
            path = _find(src, near)
            sacpo, sacpo_near, sacpo_where = read_yaml(path), path, str(path)
        else:
            sacpo, sacpo_near, sacpo_where = _mapping(src, f"{where}.sacpo"), near, f"{where}.sacpo"
        sacpo = {k: v for k, v in sacpo.items() if k != "output_dir"}
        stages = _sacpo_stages(sacpo, sacpo_where, sacpo_near, base, cli, out / name,
                               inline={k: spec.get(k) for k in ("helpful", "harmless")})
        return Method(name, stages, kind="sacpo")
    if "config" not in spec:
        raise ConfigError(f"{where}: a method needs 'config: FILE' (a training config) or "
                          "'sacpo: FILE'")
    name_of_engine = str(spec.pop("engine", "train"))
    try:
        settings = engine(name_of_engine).settings
    except ConfigError as e:
        raise ConfigError(f"{where}: engine: {e}") from None
    layers = [_file_layer(spec.pop("config"), near), *base, Layer(where, spec), cli]
    check_config_keys(spec, settings, where, noun="key")  # at load time, before anything trains
    return Method(name, [Stage(name, layers, out / name, engine=name_of_engine)])


def _evaluation(data: dict, where: str, prompts: str | None, max_prompts: int | None):
    ev = dict(_mapping(data.get("evaluation"), f"{where}: evaluation"))
    check_keys(ev, EVAL_KEYS, f"{where}: evaluation")
    if prompts is not None:
        ev["prompts"] = prompts
    if max_prompts is not None:
        ev["max_prompts"] = max_prompts
    if ev and "prompts" not in ev:
        raise ConfigError(f"{where}: evaluation needs 'prompts' (e.g. world, or a dataset)")
    return ev or None


def load_plan(command: str, config_path: str | Path, *, cli: Layer | None = None,
              overrides: list[str] = (),
              output_dir: str | None = None, only: list[str] | None = None,
              deltas: list[float] | None = None, prompts: str | None = None,
              max_prompts: int | None = None) -> Plan:
    """What ``command`` ("compare", "sweep", "sacpo") will train and evaluate; nothing runs.
    ``cli``: TrainConfig values for every run (the command line), winning over the files;
    ``overrides``: the same as ``["--key", "value", ...]`` (a script's argv)."""
    path = Path(config_path)
    data = read_yaml(path)
    where = str(path)
    check_keys(data, _TOP[command], where)
    out = Path(output_dir or data.get("output_dir") or f"runs/{command}")
    cli = Layer("command line", (cli.values if cli else parse_overrides(list(overrides),
                                                                        SafeRLHFConfig)),
                typed_by_user=True, shared=True)
    if command == "sacpo":
        stages = _sacpo_stages(data, where, path, [], cli, out)
        return Plan(out, [Method("sacpo", stages, kind="sacpo")], evaluation=None,
                    reference=False)
    base = [Layer(f"{where}: base", _mapping(data.get("base"), f"{where}: base"), shared=True)]
    if command == "sweep":
        values = deltas if deltas else data.get("deltas")
        if not values:
            raise ConfigError(f"{where}: give the Deltas to sweep ('deltas: [0, 2, 5, 10, 20]' "
                              "or --deltas 0 2 5 10 20)")
        spec = _mapping(data.get("method"), f"{where}: method")
        specs = {f"delta_{float(d):g}": {**spec, "delta": float(d)} for d in values}
    else:
        specs = _mapping(data.get("methods"), f"{where}: methods")
        if not specs:
            raise ConfigError(f"{where}: 'methods' lists no method")
    if only:
        missing = [n for n in only if n not in specs]
        if missing:
            raise ConfigError(f"--methods: {missing} not in {where} (has {list(specs)})")
        specs = {n: specs[n] for n in only}
    for n in specs:
        check_method_name(n, f"{where}: methods")
    methods = [_method(n, s, f"{where}: methods.{n}", path, base, cli, out)
               for n, s in specs.items()]
    _check_shared_keys([*base, cli], methods)
    helpful = data.get("helpful")
    if helpful is not None and helpful not in {m.name for m in methods}:
        helpful = None  # e.g. --methods left it out: raw reward instead of the normalized scale
    return Plan(out, methods, evaluation=_evaluation(data, where, prompts, max_prompts),
                reference=bool(data.get("reference", True)), helpful=helpful,
                title=data.get("title") or ("SafeDPO over Delta" if command == "sweep" else None))


def _check_shared_keys(layers: list[Layer], methods: list[Method]) -> None:
    """A key of ``base`` or the command line that no method's engine reads is an error (e.g.
    --kl_coef in a comparison without a Safe RLHF method), not silently nothing."""
    settings = {engine(s.engine).settings for m in methods for s in m.stages}
    for layer in layers:
        for key in layer.values:
            if not any(key in fields_of(cls) for cls in settings):
                raise ConfigError(f"{layer.where}: '{key}' is read by no method of this "
                                  "comparison (it is a setting of another engine)")


def check_same_start(configs: dict[str, Any]) -> None:
    """All methods start from the same reference, data and seed (first stage of each)."""
    for key in _SAME:
        values = {name: getattr(c, key) for name, c in configs.items()}
        if len(set(map(str, values.values()))) > 1:
            raise ConfigError(
                f"methods differ in '{key}': {values}. A comparison trains every method from "
                f"the same reference, data and seed: set '{key}' under base: (or on the "
                "command line) instead of per method")


# --- reuse keys -----------------------------------------------------------------------------

def _path_fingerprint(value: str | None) -> str | None:
    """Local file or dir: hash of its files' names, sizes and mtimes; else the string."""
    if not value:
        return value
    p = Path(value).expanduser()
    if not p.exists():
        return value
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    h = hashlib.sha256(str(p.resolve()).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def train_key(config, engine_name: str = "train") -> dict:
    """What the trained model depends on: the engine, the resolved config and the input
    files."""
    cfg = {"engine": engine_name,
           **{k: v for k, v in config.to_dict().items() if k not in BOOKKEEPING_KEYS}}
    ref = config.ref_model_name_or_path
    if isinstance(config, SafeRLHFConfig):  # its reward/cost models are inputs too
        cfg["score_models"] = {k: _path_fingerprint(getattr(config, k))
                               for k in ("reward_model_path", "cost_model_path")}
    return {"config": cfg,
            "model": weights_fingerprint(config.model_name_or_path, config.gguf_file),
            "ref_model": weights_fingerprint(ref) if ref and ref != config.model_name_or_path
            else None,
            "dataset": _path_fingerprint(config.dataset)}


def eval_inputs(settings: dict) -> dict:
    """What an evaluation reads besides its settings: fingerprints of a local prompts file
    and of each local reward/cost model (a hub id or ``world`` stays as it is), so editing
    the prompts or replacing a scorer model re-evaluates."""
    prompts = settings.get("prompts")
    world = str(prompts) == "world" or str(prompts).startswith("world:")
    scorers = settings.get("scorers") or []
    scorers = [scorers] if isinstance(scorers, str) else list(scorers)
    models = {}
    for spec in map(str, scorers):
        kind, _, path = spec.partition(":")
        if kind in ("reward", "cost") and path:
            models[spec] = _path_fingerprint(path)
    return {"prompts": None if world or prompts is None else _path_fingerprint(str(prompts)),
            "scorer_models": models, "answers": _path_fingerprint(settings.get("answers"))}


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _key_matches(directory: Path, key: dict, *needed: str, name: str = KEY_FILE) -> bool:
    f = directory / name
    if not f.is_file() or any(not (directory / n).exists() for n in needed):
        return False
    try:
        return json.loads(f.read_text()).get("digest") == _digest(key)
    except (ValueError, OSError):
        return False


def finished_runs(root: Path) -> dict[str, Path]:
    """{key digest: run dir} of the finished training runs under ``root`` (any method)."""
    found = {}
    for f in sorted(root.rglob(KEY_FILE)) if root.is_dir() else []:
        d = f.parent
        if (d / "model").is_dir() and (d / "train_summary.json").is_file():
            try:
                found.setdefault(json.loads(f.read_text())["digest"], d)
            except (ValueError, KeyError, OSError):
                continue
    return found


def _write_key(directory: Path, key: dict, name: str = KEY_FILE) -> None:
    tmp = directory / (name + ".tmp")
    tmp.write_text(json.dumps({"digest": _digest(key), "key": key}, indent=2, default=str))
    tmp.replace(directory / name)


# --- running --------------------------------------------------------------------------------

def check_replaceable(run_dir: Path, force: bool = False) -> None:
    """compare replaces only what it made: a run dir with its key file (a finished or
    started stage), an empty or missing one; anything else (a run of ``safedpo train``, other
    files) only with ``--force``."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, not a run dir: move it or use another "
                          "--output_dir")
    if force or not run_dir.is_dir() or not any(run_dir.iterdir()) \
            or (run_dir / KEY_FILE).is_file() or (run_dir / STARTED_FILE).is_file():
        return
    raise ConfigError(f"{run_dir} holds files that safedpo compare did not write (no "
                      f"{KEY_FILE}: e.g. a run of safedpo train); use another --output_dir "
                      "(or method name), or --force to replace it")


def _state():
    return PartialState()


def is_main_process() -> bool:
    return _state().is_main_process


def train_stage(stage: Stage, *, force: bool = False, done: dict | None = None
                ) -> tuple[dict, bool]:
    """Train one stage unless an identical run is already there. -> (summary, reused).
    An interrupted run of the same key (``force`` aside) goes on from its latest checkpoint.

    ``done``: {key digest: run dir} of finished runs (this invocation's and those found on
    disk); a stage with the same key as another method's run (e.g. SACPO's stage 1 and
    DPO-HELPFUL) points at that run instead of training."""
    config = stage.config()
    key = train_key(config, stage.engine)
    digest = _digest(key)
    if done is not None and digest in done and done[digest] != stage.run_dir:
        summary = json.loads((done[digest] / "train_summary.json").read_text())
        if not summary.get("interrupted"):
            stage.run_dir = done[digest]  # a later stage (SACPO stage 2) starts from this one
            return summary, True
    check_replaceable(stage.run_dir, force)
    if done is not None:
        done[digest] = stage.run_dir
    if not force and _key_matches(stage.run_dir, key, "model", "train_summary.json"):
        summary = json.loads((stage.run_dir / "train_summary.json").read_text())
        if not summary.get("interrupted"):
            return summary, True
    resume = not force and _key_matches(stage.run_dir, key, name=STARTED_FILE) \
        and bool(list_checkpoints(stage.run_dir))
    _state().wait_for_everyone()  # every process has decided before the file is rewritten
    if resume:  # the same run, interrupted: go on with it
        config.resume_from_checkpoint = "latest"
    else:
        config.overwrite_output_dir = True  # our own previous run of this stage, now stale
    if _state().is_main_process:
        stage.run_dir.mkdir(parents=True, exist_ok=True)
        _write_key(stage.run_dir, key, STARTED_FILE)  # first: the dir stays marked as ours
        (stage.run_dir / KEY_FILE).unlink(missing_ok=True)  # a crash must not leave a stale key
    _state().wait_for_everyone()
    summary = run_engine(stage.engine, config)
    if summary.get("interrupted"):
        raise KeyboardInterrupt(f"training of {stage.run_dir} was interrupted at step "
                                f"{summary['global_step']} (checkpoint in "
                                f"{stage.run_dir / 'checkpoints'})")
    if _state().is_main_process:
        _write_key(stage.run_dir, key)
        (stage.run_dir / STARTED_FILE).unlink()
    _state().wait_for_everyone()
    return summary, False


def evaluate_model(label: str, model: str, eval_dir: Path, settings: dict, *,
                   depends_on: dict, prompt_template: str | None, force: bool = False
                   ) -> tuple[dict | None, bool]:
    """Evaluate once (main process only); reused when the model, the settings and the
    local files they name (prompts, scorer models) are unchanged."""
    key = {"model": depends_on, "evaluation": settings, "inputs": eval_inputs(settings),
           "prompt_template": prompt_template}
    state = _state()
    reused = not force and _key_matches(eval_dir, key, "metrics.json")
    metrics = None
    if state.is_main_process:
        if reused:
            metrics = json.loads((eval_dir / "metrics.json").read_text())
        else:
            (eval_dir / KEY_FILE).unlink(missing_ok=True)
            kwargs = {k: v for k, v in settings.items() if k != "prompts"}
            metrics = runner.evaluate(model, settings["prompts"], eval_dir, label=label,
                                      prompt_template=prompt_template, overwrite=True, **kwargs)
            _write_key(eval_dir, key)
    state.wait_for_everyone()
    return metrics, reused


def _train_method(method: Method, force: bool, log, done: dict) -> dict:
    seconds, steps, reused_all, stages = 0.0, 0, True, {}
    for stage in method.stages:
        log(f"training {method.name}" + (f" / {stage.name}" if len(method.stages) > 1 else "")
            + f" -> {stage.run_dir}")
        summary, reused = train_stage(stage, force=force, done=done)
        log(("reused " if reused else "trained ") + f"{stage.run_dir} "
            f"({summary['global_step']} steps, {summary['train_seconds']:.2f} s)")
        seconds += summary["train_seconds"]
        steps += summary["global_step"]
        reused_all &= reused
        stages[stage.name] = {"run_dir": str(stage.run_dir), "reused": reused,
                              "train_seconds": summary["train_seconds"],
                              "global_step": summary["global_step"]}
    return {"run_dir": str(method.run_dir), "kind": method.kind, "train_seconds": seconds,
            "global_step": steps, "reused": reused_all, "stages": stages}


def run_plan(plan: Plan, *, force: bool = False, log=print) -> dict:
    """Train every method, evaluate each (and the reference), write the combined report.
    Returns the summary also written to OUTPUT_DIR/compare_summary.json."""
    t0 = time.time()
    first = {m.name: m.stages[0].config() for m in plan.methods}
    check_same_start(first)
    for method in plan.methods:  # before anything trains
        for stage in method.stages:
            check_replaceable(stage.run_dir, force)
    if plan.evaluation is not None:  # the prompts and scorers too: not after hours of training
        try:
            ev = dict(plan.evaluation)
            runner.check_evaluation(ev.pop("prompts"), **ev)
        except (ValueError, FileNotFoundError) as e:  # DataError is a ValueError
            raise ConfigError(f"evaluation: {e}") from None
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    done = {} if force else finished_runs(plan.output_dir)
    for i, method in enumerate(plan.methods, 1):
        log(f"[{i}/{len(plan.methods)}] {method.name}")
        results[method.name] = _train_method(method, force, log, done)
    summary: dict[str, Any] = {"output_dir": str(plan.output_dir), "methods": results}
    if plan.evaluation is not None:
        summary.update(_evaluate_all(plan, results, first, force, log))
    summary["total_seconds"] = time.time() - t0
    if _state().is_main_process:
        (plan.output_dir / "compare_summary.json").write_text(
            json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _evaluate_all(plan: Plan, results: dict, first: dict, force: bool, log) -> dict:
    settings = dict(plan.evaluation)
    any_config = next(iter(first.values()))
    eval_dirs, labels = [], []
    if plan.reference:
        ref_model = any_config.ref_model_name_or_path or any_config.model_name_or_path
        ref_dir = plan.output_dir / "reference" / "eval"
        log(f"evaluating the reference {ref_model}")
        _, reused = evaluate_model("reference", ref_model, ref_dir, settings,
                                   depends_on={"reference": weights_fingerprint(
                                       ref_model, any_config.gguf_file)},
                                   prompt_template=any_config.prompt_template, force=force)
        eval_dirs.append(ref_dir)
        labels.append("reference")
    for name, res in results.items():
        run_dir = Path(res["run_dir"])
        eval_dir = run_dir / "eval" / "compare"
        log(f"evaluating {name}")
        _, reused = evaluate_model(name, str(run_dir), eval_dir, settings,
                                   depends_on={"weights": weights_fingerprint(str(run_dir))},
                                   prompt_template=None, force=force)
        res.update(eval_dir=str(eval_dir), eval_reused=reused)
        eval_dirs.append(eval_dir)
        labels.append(name)
    out: dict[str, Any] = {}
    if _state().is_main_process:
        paths = write_report(eval_dirs, plan.output_dir, labels=labels,
                             reference="reference" if plan.reference else None,
                             helpful=plan.helpful if plan.reference else None,
                             title=plan.title, n_boot=settings.get("n_boot", 1000),
                             sections=[training_section(results)])
        out["report"] = {k: str(v) for k, v in paths.items()}
        log(f"report: {paths['markdown']}")
    _state().wait_for_everyone()
    return out


def training_section(results: dict) -> ReportSection:
    """Training time per method, for the report."""
    lines = ["Wall-clock seconds of the optimisation loop (model loading, tokenization and "
             "reference log-probs excluded), from each run's train_summary.json; SACPO adds "
             "its two stages (its stage 1 is the DPO-HELPFUL run itself when their configs "
             "match). Reused runs show the time of the run that produced them.", "",
             "| Method | Train seconds | Optimizer steps | Run dir |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['train_seconds']:.2f} | {r['global_step']} | "
                     f"`{r['run_dir']}` |")
    data = {n: {k: r[k] for k in ("train_seconds", "global_step", "run_dir", "kind", "stages")}
            for n, r in results.items()}
    return ReportSection("Training time", lines, "training", data)
