"""Sequence log-probs of response tokens, without a float32 (B, T, V) log-softmax.

What is held in memory, for logits (B, K, V) of dtype D (bf16, fp16 or fp32) and targets (B, K):

* Logits are computed only from the earliest response position on (``logits_to_keep`` when
  the model supports it), so K is the response span, not the whole sequence.
* Forward (``token_logps``): ``log_softmax(logits, dtype=float32)[target]``, one chunk of rows
  at a time (at most ``_CHUNK_ELEMENTS`` = 2**22 logits, or one row if a row is larger; a
  chunk is one or more whole batch rows, else a run of positions in one batch row). The only
  temporaries are that chunk's float32 log-softmax (16 MiB at most) and, for bf16/fp16
  logits, its float32 upcast; the result is (B, K) float32.
* Saved for backward, only when grad is enabled and the logits require grad: the logits
  themselves (the tensor the model produced, by reference, in dtype D: no copy, no upcast)
  and the int64 targets (a slice of the model's output keeps that whole output alive until
  backward). Nothing float32 of size V is saved, whatever D is (a per-row
  ``logsumexp(row.float())`` under autograd would save every row's float32 upcast:
  B*K*V*4 bytes). Under ``torch.no_grad`` nothing is saved.
* Backward: ``grad_logits = g * (onehot(target) - softmax(logits, dtype=float32))``, the
  softmax recomputed chunk by chunk with torch's fused kernel (the same chunk-sized
  temporaries) and written into one (B, K, V) tensor of dtype D: the gradient autograd needs
  anyway, and the only (B, K, V) allocation. For float32 logits the softmax is written
  straight into the gradient. Callers pass the model's logits whole, with one more target
  per row where a row predicts two tokens from one position (``extra``): a slice of the
  logits would make autograd allocate a zero (B, K, V) gradient and copy into it, an index
  another and their sum (on SmolLM2 + LoRA 48 ms of a 2.8 s step, measured).

For float32 logits, values and gradients equal ``log_softmax(logits).gather(...)`` and its
gradient to rounding (~1e-7); for bf16 logits both are computed in float32 from the bf16
values (more accurate than a bf16 log-softmax) and the gradient is rounded once to bf16.
"""

from __future__ import annotations

import inspect

import torch

# Float32 elements per chunk of rows (2**22 = 16 MiB): large enough that small vocabularies
# take a whole batch row (or several) in one chunk, small enough to bound the temporaries.
_CHUNK_ELEMENTS = 1 << 22


def _base_forward(model):
    """The innermost module whose forward takes the real keyword arguments."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model"):  # peft
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP...
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
    return model.forward


def accepts_logits_to_keep(model) -> bool:
    """Whether ``model(..., logits_to_keep=k)`` returns only the last k positions' logits."""
    try:
        return "logits_to_keep" in inspect.signature(_base_forward(model)).parameters
    except (TypeError, ValueError):
        return False


def _chunks(b: int, k: int, v: int):
    """(batch slice, position slice) blocks of the (b, k) rows, each <= _CHUNK_ELEMENTS
    logits (or one row, if a row alone is larger): whole batch rows when they fit, else
    runs of positions within one batch row. Each block of the logits is a view."""
    if b * k * v == 0:
        return
    if k * v <= _CHUNK_ELEMENTS:
        step = _CHUNK_ELEMENTS // (k * v)
        for b0 in range(0, b, step):
            yield slice(b0, b0 + step), slice(None)
    else:
        step = max(1, _CHUNK_ELEMENTS // v)
        for i in range(b):
            for k0 in range(0, k, step):
                yield slice(i, i + 1), slice(k0, k0 + step)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for bf16/fp16/fp32 logits; float64 stays float64 (for gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Scratch:
    """Chunk-sized buffers in the accumulation dtype, allocated on first use and reused for
    every chunk of one call (the first chunk is the largest)."""

    def __init__(self, dtype: torch.dtype, device: torch.device):
        self.dtype, self.device, self.bufs = dtype, device, {}

    def __call__(self, name: str, shape: torch.Size) -> torch.Tensor:
        n = shape.numel()
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < n:
            buf = self.bufs[name] = torch.empty(n, dtype=self.dtype, device=self.device)
        return buf[:n].view(shape)

    def upcast(self, x: torch.Tensor) -> torch.Tensor:
        """x itself when it has the accumulation dtype, else its upcast in a buffer."""
        return x if x.dtype == self.dtype else self("upcast", x.shape).copy_(x)


def _forward(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, K) log-probs in the accumulation dtype; temporaries: one chunk's log-softmax and,
    for bf16/fp16 logits, one chunk's upcast."""
    b, k, v = logits.shape
    scratch = _Scratch(_acc_dtype(logits.dtype), logits.device)
    out = torch.empty((b, k), dtype=scratch.dtype, device=logits.device)
    for bs, ks in _chunks(b, k, v):
        x = scratch.upcast(logits[bs, ks])
        logp = torch.log_softmax(x, dim=-1, out=scratch("logp", x.shape))
        out[bs, ks] = logp.gather(-1, targets[bs, ks].unsqueeze(-1)).squeeze(-1)
    return out


def _extra_rows(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """logits[i, positions[i]] for every row i: (B, V), a copy in the accumulation dtype."""
    rows = logits[torch.arange(len(positions), device=logits.device), positions]
    return rows.to(_acc_dtype(logits.dtype))


def _extra_forward(logits: torch.Tensor, positions: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor:
    """(B,) log softmax(logits[i, positions[i]])[targets[i]]; (0,) when there are none."""
    if not len(positions):
        return logits.new_empty(0, dtype=_acc_dtype(logits.dtype))
    logp = torch.log_softmax(_extra_rows(logits, positions), dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


class _TokenLogps(torch.autograd.Function):
    """log softmax(logits)[target] at every position, and optionally one more target per batch
    row at a given position (``extra_pos``, ``extra_targets``: (B,) each, or empty); saves only
    the logits (own dtype) and the targets. The gradient of the whole (B, K, V) logits is one
    tensor written once: no slice or index backward allocates and adds more of that size."""

    @staticmethod
    def forward(ctx, logits, targets, extra_pos, extra_targets):
        ctx.save_for_backward(logits, targets, extra_pos, extra_targets)
        return _forward(logits, targets), _extra_forward(logits, extra_pos, extra_targets)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_extra):
        logits, targets, extra_pos, extra_targets = ctx.saved_tensors
        b, k, v = logits.shape
        scratch = _Scratch(_acc_dtype(logits.dtype), logits.device)
        grad_out = grad_out.to(scratch.dtype)
        # d out[b,k] / d logits[b,k,:] = onehot(target) - softmax(logits[b,k,:]), chunk by
        # chunk, the softmax recomputed by torch's fused kernel in the accumulation dtype;
        # written straight into the gradient when it has that dtype, else finished in the
        # accumulation dtype and rounded once on the copy.
        grad = torch.empty((b, k, v), dtype=logits.dtype, device=logits.device)
        for bs, ks in _chunks(b, k, v):
            g, dst = grad_out[bs, ks].unsqueeze(-1), grad[bs, ks]
            x = scratch.upcast(logits[bs, ks])
            p = dst if dst.dtype == scratch.dtype else scratch("p", x.shape)
            p = torch.softmax(x, dim=-1, out=p).mul_(-g)
            p.scatter_add_(-1, targets[bs, ks].unsqueeze(-1), g)
            if p is not dst:
                dst.copy_(p)
        if len(extra_pos) and grad_extra is not None:
            # the same for the extra targets, added to their rows (B of them, each (V,))
            g = grad_extra.to(scratch.dtype).unsqueeze(-1)
            p = torch.softmax(_extra_rows(logits, extra_pos), dim=-1).mul_(-g)
            p.scatter_add_(-1, extra_targets.unsqueeze(-1), g)
            idx = torch.arange(len(extra_pos), device=grad.device)
            grad.index_put_((idx, extra_pos), p.to(grad.dtype), accumulate=True)
        return grad, None, None, None


def token_logps(logits: torch.Tensor, targets: torch.Tensor,
                extra: tuple[torch.Tensor, torch.Tensor] | None = None):
    """log softmax(logits)[target] for logits (B, K, V), targets (B, K) -> (B, K) float32
    (float64 for float64 logits). Other ranks work too: logits (..., V), targets (...).

    ``extra = (positions, targets)``, (B,) each: one more target per batch row, predicted by
    the logits at that row's position; then returns ``(logps, extra_logps)``. Give the
    logits whole (a position without a target gets any target and is masked by the caller):
    a slice or an index of them would make autograd allocate and add more gradients of their
    size.

    Never materializes a float32 (B, K, V) tensor in the forward, nor saves one for backward
    (see the module docstring for exactly what is held)."""
    shape = targets.shape
    if logits.dim() != 3:
        if extra is not None:
            raise ValueError("extra targets need logits of shape (B, K, V)")
        logits = logits.reshape(-1, 1, logits.shape[-1]) if logits.dim() < 3 \
            else logits.flatten(0, -3)
        targets = targets.reshape(logits.shape[:2])
    pos, tgt = extra if extra is not None else (targets.new_empty(0), targets.new_empty(0))
    if torch.is_grad_enabled() and logits.requires_grad:
        out, out_extra = _TokenLogps.apply(logits, targets, pos, tgt)
    else:
        out, out_extra = _forward(logits, targets), _extra_forward(logits, pos, tgt)
    out = out.reshape(shape)
    return out if extra is None else (out, out_extra)


def sequence_logps_and_counts(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              loss_mask: torch.Tensor, logits_start: int | None = None,
                              keep_logits: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of target-token log-probs (B,) float32 and number of target tokens (B,).

    input_ids, attention_mask (B, T); loss_mask (B, T) bool marks TARGET positions.
    ``logits_start``: first target position over the batch (a python int; computed from
    ``loss_mask`` with one host sync when not given). ``keep_logits``: whether the model takes
    ``logits_to_keep`` (looked up when not given).
    """
    t = input_ids.shape[1]
    if logits_start is None:
        starts = torch.where(loss_mask.any(dim=1), loss_mask.float().argmax(dim=1), t)
        logits_start = int(starts.min())
    start = max(int(logits_start), 1)  # position 0 is never predicted
    if keep_logits is None:
        keep_logits = accepts_logits_to_keep(model)
    # Logits at positions start-1 .. T-2 predict tokens start .. T-1; the last position's
    # logits predict nothing (target 0, masked): the logits go to token_logps whole.
    if keep_logits:
        logits = model(input_ids=input_ids, attention_mask=attention_mask,
                       logits_to_keep=t - start + 1, use_cache=False).logits
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask,
                       use_cache=False).logits[:, start - 1:]
    targets = torch.nn.functional.pad(input_ids[:, start:], (0, 1))
    mask = torch.nn.functional.pad(loss_mask[:, start:], (0, 1))
    logps = token_logps(logits, targets)
    return torch.where(mask, logps, 0.0).sum(dim=-1), mask.sum(dim=-1)


def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   loss_mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """(B,) sum (or mean, ``average=True``) of log p(token) over positions where
    ``loss_mask`` (B, T) is True (the response tokens incl. EOS)."""
    sums, counts = sequence_logps_and_counts(model, input_ids, attention_mask, loss_mask)
    return sums / counts.clamp(min=1) if average else sums


# Architectures whose shared-prompt log-probs are tested equal to the unshared ones (fp32,
# 1e-5; tests/test_logprobs.py): a custom 4D mask and position ids reach every layer as given.
SHARED_PROMPT_MODELS = ("llama", "qwen2")
# Attention kernels that take an arbitrary 4D mask (flash attention takes only padding masks).
_MASK_KERNELS = ("sdpa", "eager")


def shared_prompt_support(model) -> str | None:
    """None when ``model`` can run a pair as one [prompt, chosen, rejected] row; else why not
    (one line, for the notice)."""
    config = getattr(_base_module(model), "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in SHARED_PROMPT_MODELS:
        return (f"model type {kind!r} is not among those tested with a shared prompt "
                f"({', '.join(SHARED_PROMPT_MODELS)})")
    kernel = getattr(config, "_attn_implementation", None)
    if kernel not in _MASK_KERNELS:
        return f"its attention ({kernel}) takes no custom 4D mask (sdpa and eager do)"
    return None


def _base_module(model):
    return _base_forward(model).__self__


def shared_pair_logps_and_counts(model, batch: dict, keep_logits: bool | None = None
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob sums and target counts of a ``collate_shared_pairs`` batch (B rows), in the
    unshared layout: (2B,) each, chosen rows then rejected rows.

    One forward per pair: the 4D ``pair_mask`` (as a bool mask for sdpa, an additive float mask
    for eager attention) and ``position_ids`` make each answer token see exactly what it sees
    in its own [prompt, answer] sequence."""
    input_ids, mask = batch["input_ids"], batch["pair_mask"]
    t = input_ids.shape[1]
    start = max(int(batch["logits_start"]), 0)
    if keep_logits is None:
        keep_logits = accepts_logits_to_keep(model)
    kernel = getattr(getattr(_base_module(model), "config", None), "_attn_implementation", None)
    if kernel == "eager":  # additive: 0 where allowed, the dtype's minimum elsewhere
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min)
    kwargs = {"input_ids": input_ids, "attention_mask": mask,
              "position_ids": batch["position_ids"], "use_cache": False}
    if keep_logits:
        logits = model(**kwargs, logits_to_keep=t - start).logits  # positions start .. T-1
    else:
        logits = model(**kwargs).logits[:, start:]
    # Every answer token but a shared row's first rejected one is the row's next token; the
    # first rejected token is predicted by the prompt's last position, one more target in that
    # row. One token_logps over the whole kept logits: position i (i = start .. T-1) predicts
    # token i + 1 (the last position nothing: target 0, masked).
    first = batch["first_rejected"]  # (B,), -1: none (no host sync: masked, not skipped)
    has = first >= 0
    targets = torch.nn.functional.pad(input_ids[:, start + 1:], (0, 1))  # (B, T - start)
    logps, extra = token_logps(logits, targets,
                               extra=((first - start).clamp(min=0), batch["first_rejected_id"]))
    chosen, rejected = batch["chosen_next"][:, start:], batch["rejected_next"][:, start:]
    sums = torch.cat([torch.where(chosen, logps, 0.0).sum(-1),
                      torch.where(rejected, logps, 0.0).sum(-1)])  # (2B,)
    counts = torch.cat([chosen.sum(-1), rejected.sum(-1)])
    sums = sums + torch.cat([torch.zeros_like(extra), torch.where(has, extra, 0.0)])
    counts = counts + torch.cat([torch.zeros_like(has.long()), has.long()])
    return sums, counts
