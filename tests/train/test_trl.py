"""SafeDPO inside TRL (safedpo.train.trl): its loss equals ours on the same batch."""

import math
import warnings

import pytest
import torch
from helpers import FIXTURES, tiny_model
from torch.utils.data import SequentialSampler

from safedpo.data import load_pairs
from safedpo.logprobs import sequence_logps
from safedpo.losses import LOSSES

trl = pytest.importorskip("trl")
from safedpo.train.trl import SafeDPOTrainer, safety_dataset  # noqa: E402

DATA = FIXTURES / "data" / "pku_v1_small.jsonl"


class InOrder(SafeDPOTrainer):
    def _get_train_sampler(self, *args, **kwargs):  # batches in dataset order, as ours
        return SequentialSampler(self.train_dataset)


def _texts(dataset):
    return [t for row in dataset for t in (row["prompt"], row["chosen"], row["rejected"])]


def _trainer(tmp_path, dataset, ref_model=None, delta=10.0, beta=0.1, **config):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model(tmp_path, "policy", texts=_texts(dataset))
    args = trl.DPOConfig(output_dir=str(tmp_path / "out"), beta=beta, report_to="none",
                         use_cpu=True, per_device_train_batch_size=len(dataset),
                         max_length=64, **config)
    trainer = InOrder(model=AutoModelForCausalLM.from_pretrained(path), ref_model=ref_model,
                      args=args, train_dataset=dataset,
                      processing_class=AutoTokenizer.from_pretrained(path), delta=delta)
    return trainer, path


def test_safety_dataset_is_the_safedpo_view_with_trl_columns():
    ds = safety_dataset(str(DATA))
    pairs, _ = load_pairs(str(DATA), view="safedpo")
    assert ds.column_names == ["prompt", "chosen", "rejected", "chosen_unsafe", "rejected_unsafe"]
    assert [(r["prompt"], r["chosen"], r["rejected"], r["chosen_unsafe"], r["rejected_unsafe"])
            for r in ds] == [(p.prompt, p.chosen, p.rejected, p.chosen_unsafe, p.rejected_unsafe)
                             for p in pairs]
    assert not any(ds["chosen_unsafe"]) and any(ds["rejected_unsafe"])  # after keep/swap/drop
    assert safety_dataset(trl_dataset := ds.from_json(str(DATA))).to_list() == ds.to_list()
    assert len(trl_dataset) > len(ds)  # both-unsafe rows dropped


def test_policy_equal_to_reference_gives_ln2_and_softplus_delta(tmp_path):
    ds = safety_dataset(str(DATA))
    with pytest.warns(UserWarning, match="precompute_ref_log_probs is turned on"):
        trainer, _ = _trainer(tmp_path, ds, delta=3.0)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    # policy == reference: every log-ratio is 0, so each pair's loss is -log sigmoid(-m):
    # ln 2 for a safe/safe pair, softplus(Delta) for a safe/unsafe one.
    expected = [math.log1p(math.exp(3.0)) if u else math.log(2) for u in ds["rejected_unsafe"]]
    # float32: the precomputed and the live forward differ by ~1e-5 nats in padding
    assert float(loss) == pytest.approx(sum(expected) / len(expected), abs=1e-5)


def test_loss_equals_ours_on_the_same_batch(tmp_path):
    from transformers import AutoModelForCausalLM

    ds = safety_dataset(str(DATA))
    path = tiny_model(tmp_path, "policy", texts=_texts(ds))
    ref = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():  # a reference that differs from the policy
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        trainer, _ = _trainer(tmp_path, ds, ref_model=ref, delta=10.0, beta=0.1)
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model
    with torch.no_grad():
        theirs = trainer.compute_loss(model, batch)
        mask = batch["completion_mask"].bool()
        policy = sequence_logps(model, batch["input_ids"], batch["attention_mask"], mask)
        reference = sequence_logps(ref, batch["input_ids"], batch["attention_mask"], mask)
    pc, pr = policy.chunk(2)
    rc, rr = reference.chunk(2)
    cu = torch.tensor(ds["chosen_unsafe"], dtype=torch.float32)
    ru = torch.tensor(ds["rejected_unsafe"], dtype=torch.float32)
    ours = LOSSES["safedpo"](pc, pr, rc, rr, cu, ru, beta=0.1, delta=10.0)[0].mean()
    assert float((pc - rc).abs().max()) > 1e-3  # the policy is not the reference
    assert float(theirs) == pytest.approx(float(ours), abs=1e-6)


def test_other_trl_losses_and_unlabelled_data_are_refused(tmp_path):
    ds = safety_dataset(str(DATA))
    with pytest.raises(ValueError, match="loss_type='sigmoid'"):
        _trainer(tmp_path, ds, loss_type="ipo", precompute_ref_log_probs=True)
    plain = ds.remove_columns(["chosen_unsafe", "rejected_unsafe"])
    with pytest.raises(ValueError, match=r"train_dataset has no \['chosen_unsafe', "
                                         r"'rejected_unsafe'\] column: build it with"):
        _trainer(tmp_path, plain, precompute_ref_log_probs=True)
