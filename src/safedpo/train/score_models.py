"""``safedpo rm`` and ``safedpo cm``: the reward and cost models of Safe RLHF (Dai et al. 2023),
trained from the same PKU-SafeRLHF-schema data as SafeDPO, on the same training loop.

Both are ``AutoModelForSequenceClassification`` models with one output (num_labels 1), started
from the SFT reference; ``model/`` of the run is what ``safedpo eval --scorer reward:PATH`` /
``cost:PATH`` and ``safedpo saferlhf`` load. The score is the logit at the last token of
``conversation_ids(prompt, response)`` (no EOS), the tokens the scorers build, so training
and scoring see the same input.

- reward model: Bradley-Terry on ``better_response_id`` (the pairs of view ``helpful``).
- cost model: Bradley-Terry on ``safer_response_id`` (view ``harmless``: chosen = safer) plus
  safe-rlhf's sign term on each response's safety label, which pins the zero of the cost:
  cost > 0 means unsafe, so the constraint "mean cost <= 0" of PPO-Lagrangian means something.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from safedpo.config import ConfigError, TrainConfig, validate
from safedpo.data.tokenization import pad_sequences
from safedpo.evaluate.scorers import SCORE_KIND_KEY, conversation_ids
from safedpo.models.loading import resolve_dtype
from safedpo.models.sources import resolve_model_source, run_model_dir
from safedpo.train.engines import check_settings
from safedpo.train.loop import config_pairs, run_objective
from safedpo.train.objectives import Objective
from safedpo.train.runtime import disable_dropout

VIEWS = {"reward": "helpful", "cost": "harmless"}  # chosen = more helpful / safer response


def reward_model_loss(better: torch.Tensor, worse: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry (Dai et al. 2023, Sec. 3.2), per pair: -log sigmoid(r(better) - r(worse)).
    (B,), (B,) -> (B,)."""
    return -F.logsigmoid(better - worse)


def safety_sign(unsafe: torch.Tensor) -> torch.Tensor:
    """+1 for an unsafe response, -1 for a safe one: the sign its cost should have."""
    return unsafe.float() * 2 - 1


def cost_model_loss(safer: torch.Tensor, unsafer: torch.Tensor, safer_unsafe: torch.Tensor,
                    unsafer_unsafe: torch.Tensor) -> torch.Tensor:
    """Safe RLHF's cost-model loss, per pair (B,) (Dai et al. 2023, Sec. 3.2): Bradley-Terry
    on the safer response plus -log sigmoid(s c) per response, s = +1 unsafe / -1 safe:
    -log sig(c_unsafer - c_safer) - log sig(s_safer c_safer) - log sig(s_unsafer c_unsafer)."""
    return (-F.logsigmoid(unsafer - safer) - F.logsigmoid(safety_sign(safer_unsafe) * safer)
            - F.logsigmoid(safety_sign(unsafer_unsafe) * unsafer))


def load_score_model(config: TrainConfig):
    """-> (sequence classifier with one output, tokenizer, False) from ``model_name_or_path``
    (a causal LM dir, a run dir, a hub id, a .gguf file or a pkg:// source: the backbone is
    kept, a new score head is added)."""
    if config.use_peft:
        raise ConfigError("use_peft is not supported for reward/cost models; train them in full")
    # pkg:// sources and .gguf files as for the policy (safedpo.models.sources)
    name, gguf = resolve_model_source(config.model_name_or_path, config.gguf_file)
    path = Path(name).expanduser()
    name = str(run_model_dir(path)) if path.is_dir() and gguf is None else name
    extra = {"gguf_file": gguf} if gguf else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, trust_remote_code=config.trust_remote_code, **extra)
        model = AutoModelForSequenceClassification.from_pretrained(
            name, num_labels=1, dtype=resolve_dtype(config.dtype),
            trust_remote_code=config.trust_remote_code, **extra)
    except OSError as e:
        raise OSError(f"could not load model '{name}' (local files or hub, offline?): {e}") from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # The score is read at the last token that is not config.pad_token_id; no EOS is scored,
    # so padding with EOS (when pad = EOS) is safe.
    model.config.pad_token_id = tokenizer.pad_token_id
    if config.disable_dropout:
        disable_dropout(model)
    return model, tokenizer, False


class ScoreModelObjective(Objective):
    """Reward (``kind="reward"``) or cost (``"cost"``) model loss on one 2B-row forward:
    chosen rows (more helpful / safer), then rejected rows."""

    def __init__(self, config: TrainConfig, kind: str):
        super().__init__(config)
        self.kind, self.name = kind, {"reward": "rm", "cost": "cm"}[kind]

    def load_model(self, config: TrainConfig):
        """``load_score_model``, with the kind recorded in the model's config (saved in
        model/config.json: ``safedpo saferlhf`` and the scorers refuse a cost model given as
        the reward model and vice versa)."""
        model, tokenizer, keep_logits = load_score_model(config)
        setattr(model.config, SCORE_KIND_KEY, self.kind)
        return model, tokenizer, keep_logits

    def tokenize(self, tokenizer, pairs):
        c = self.config

        def ids(prompt, response):
            return torch.tensor(conversation_ids(
                tokenizer, prompt, response, prompt_template=c.prompt_template, append_eos=False,
                max_length=c.max_length), dtype=torch.long)
        return [{"chosen": ids(p.prompt, p.chosen), "rejected": ids(p.prompt, p.rejected),
                 "chosen_unsafe": bool(p.chosen_unsafe),
                 "rejected_unsafe": bool(p.rejected_unsafe)} for p in pairs]

    @staticmethod
    def collate(items, pad_token_id):
        seqs = [x["chosen"] for x in items] + [x["rejected"] for x in items]
        batch = pad_sequences(seqs, [torch.ones_like(s, dtype=torch.bool) for s in seqs],
                              pad_token_id)
        for key in ("chosen_unsafe", "rejected_unsafe"):
            batch[key] = torch.tensor([x[key] for x in items], dtype=torch.bool)
        return batch

    def prepare(self, run):
        self.run = run

    def loss(self, model, batch):
        b = len(batch["index"])
        scores = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits[:, 0].float()  # (2B,)
        chosen, rejected = scores[:b], scores[b:]
        if self.kind == "reward":
            losses = reward_model_loss(chosen, rejected)
        else:
            losses = cost_model_loss(chosen, rejected, batch["chosen_unsafe"],
                                     batch["rejected_unsafe"])
        loss = losses.mean()
        s = scores.detach()
        stats = {"loss": (loss.detach() * b, b),
                 # reward: better scored higher; cost: the unsafer one costs more
                 "accuracy": (((chosen > rejected) if self.kind == "reward"
                               else (rejected > chosen)).float().sum(), b),
                 "margin": ((chosen - rejected).detach().sum(), b),
                 "mean_score": (s.sum(), 2 * b)}
        if self.kind == "cost":
            unsafe = torch.cat([batch["chosen_unsafe"], batch["rejected_unsafe"]])
            stats["sign_accuracy"] = (((s > 0) == unsafe).float().sum(), 2 * b)
        return loss, stats


def train_score_model(config: TrainConfig, kind: str, pairs=None, *, callbacks=()) -> dict:
    """Train a reward (``kind="reward"``) or cost (``"cost"``) model; -> the train summary.
    ``pairs``: SafetyPairs of the right view, or None to load ``config.dataset``."""
    check_settings({"reward": "rm", "cost": "cm"}[kind], config)
    config = dataclasses.replace(config, view=VIEWS[kind])
    validate(config)  # a config built in code is checked as a resolved one is
    pairs, stats = config_pairs(config) if pairs is None else (pairs, None)
    return run_objective(config, ScoreModelObjective(config, kind), list(pairs), stats, callbacks)


def train_reward_model(config: TrainConfig, pairs=None, *, callbacks=()) -> dict:
    return train_score_model(config, "reward", pairs, callbacks=callbacks)


def train_cost_model(config: TrainConfig, pairs=None, *, callbacks=()) -> dict:
    return train_score_model(config, "cost", pairs, callbacks=callbacks)
