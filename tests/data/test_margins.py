"""Per-pair margins from harm severity and category (safedpo.data.margins), the both-unsafe
modes of the transform, and the validation of the margin maps (docs/margins.md)."""

from __future__ import annotations

import pytest
import torch

from safedpo.config import ConfigError, TrainConfig, load_config
from safedpo.data.margins import PairMargins, data_categories, needs_pair_margins
from safedpo.data.sources import PreferenceRow
from safedpo.data.transform import build_pairs, transform
from safedpo.data.types import SafetyPair
from safedpo.losses import LOSSES, safedpo_loss, safety_margin
from safedpo.train.objectives import check_margin_labels


def pair(cu, ru, sev=(None, None), cats=(None, None)):
    return SafetyPair("p", "a", "b", cu, ru,
                      meta={"severity": list(sev), "harm_categories": list(cats)})


PAIRS = [
    pair(False, True, (0, 3), ([], ["Violence", "Drugs"])),   # 0: sev 3, two categories
    pair(False, True, (0, 1), ([], ["Drugs"])),               # 1: sev 1, Drugs
    pair(False, True, (0, 2), ([], ["Cybercrime"])),          # 2: sev 2, unmapped category
    pair(False, True),                                        # 3: no labels
    pair(False, False, (0, 0), ([], [])),                     # 4: safe/safe
    pair(True, False, (2, 0), (["Violence"], [])),            # 5: chosen unsafe (helpful view)
    pair(True, True, (1, 3), (["Drugs"], ["Violence"])),      # 6: both unsafe, gap 2
]
IDX = torch.arange(len(PAIRS))


def test_the_largest_matching_label_wins_and_unlabelled_pairs_get_delta():
    cfg = TrainConfig(delta=5.0, delta_by_severity={3: 20.0, 1: 1.0},
                      delta_by_category={"Violence": 8.0, "Drugs": 30.0})
    m = PairMargins(cfg, PAIRS)
    # 0: max(20, 8, 30) = 30; 1: max(1, 30) = 30; 2: sev 2 and Cybercrime unmapped -> delta;
    # 3: no labels -> delta; 4: safe/safe -> Delta 5 but sign 0; 5: the UNSAFE answer is the
    # chosen one (sev 2, Violence) -> 8, margin -8; 6: both unsafe, keep/drop mode -> 0.
    assert m.pair_delta(IDX).tolist() == [30.0, 30.0, 5.0, 5.0, 5.0, 8.0, 5.0]
    assert m.margin(IDX).tolist() == [30.0, 30.0, 5.0, 5.0, 0.0, -8.0, 0.0]
    cfg = TrainConfig(delta=5.0, delta_by_severity={3: 20.0, 1: 1.0})
    assert PairMargins(cfg, PAIRS).margin(IDX).tolist() == [20.0, 1.0, 5.0, 5.0, 0.0, -5.0, 0.0]
    # A lower Delta for a mild severity than the global one is allowed (max over MATCHED labels).
    cfg = TrainConfig(delta=5.0, delta_by_severity={1: 0.5})
    assert PairMargins(cfg, PAIRS).margin(IDX)[1].item() == 0.5


def test_by_severity_margin_is_the_gap_times_delta_sev():
    cfg = TrainConfig(delta=5.0, both_unsafe="by_severity", both_unsafe_delta=0.75)
    assert PairMargins(cfg, PAIRS).margin(IDX).tolist() == [5.0, 5.0, 5.0, 5.0, 0.0, -5.0, 1.5]
    cfg = TrainConfig(delta=5.0, keep_both_unsafe=True, both_unsafe_delta=0.75)
    assert PairMargins(cfg, PAIRS).margin(IDX)[6].item() == 0.0  # the old ablation: margin 0


@pytest.mark.parametrize("loss_type", ["safedpo", "bso_logistic", "bso_sba"])
@pytest.mark.parametrize("maps", [{}, {"delta_by_severity": {0: 7.5, 1: 7.5, 2: 7.5, 3: 7.5},
                                       "delta_by_category": {"Violence": 7.5}}])
def test_default_maps_reproduce_plain_safedpo_loss_and_gradients_exactly(loss_type, maps):
    # Empty maps (or maps that give every pair the global Delta) through the per-pair path
    # equal the plain loss bit for bit, values and gradients.
    cfg = TrainConfig(delta=7.5, **maps)
    assert needs_pair_margins(cfg) == bool(maps)
    pairs = PAIRS[:5] * 4
    cu = torch.tensor([p.chosen_unsafe for p in pairs])
    ru = torch.tensor([p.rejected_unsafe for p in pairs])
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(len(pairs), generator=gen) * 20 - 50 for _ in range(4)]
    margin = PairMargins(cfg, pairs).margin(torch.arange(len(pairs)))
    assert torch.equal(margin, safety_margin(cu, ru, 7.5))

    def run(**extra):
        leaves = [t.clone().requires_grad_(True) for t in base[:2]]
        losses, rc, rr = LOSSES[loss_type](*leaves, *base[2:], cu, ru, beta=0.1, delta=7.5,
                                           **extra)
        losses.sum().backward()
        return losses.detach(), [t.grad for t in leaves], rc, rr

    plain, with_margin = run(), run(margin=margin)
    assert torch.equal(plain[0], with_margin[0])
    for a, b in zip(plain[1], with_margin[1]):
        assert torch.equal(a, b)
        assert (a - b).abs().max() < 1e-6
    assert torch.equal(plain[2], with_margin[2]) and torch.equal(plain[3], with_margin[3])


def test_margin_enters_the_loss_outside_beta():
    z = torch.zeros(2)
    f, t = torch.tensor([False, False]), torch.tensor([True, True])
    losses, _, _ = safedpo_loss(z, z, z, z, f, t, beta=0.1, delta=1.0,
                                margin=torch.tensor([3.0, 0.0]))
    assert losses.tolist() == pytest.approx([torch.nn.functional.softplus(torch.tensor(3.0)).item(),
                                             0.6931471805599453])


# --- the transform ------------------------------------------------------------------------------

def row(better, sev0, sev1, safe=(False, False)):
    return PreferenceRow("p", "r0", "r1", better, 0, safe[0], safe[1],
                         meta={"severity_0": sev0, "severity_1": sev1,
                               "harm_categories_0": ["Violence"], "harm_categories_1": ["Drugs"]})


def test_by_severity_chooses_the_less_severe_unsafe_answer():
    assert transform(row(0, 1, 3), both_unsafe="by_severity") == ("kept", 0)
    assert transform(row(0, 3, 1), both_unsafe="by_severity") == ("swapped", 1)
    assert transform(row(1, 3, 1), both_unsafe="by_severity") == ("kept", 1)
    assert transform(row(0, 2, 2), both_unsafe="by_severity") == ("dropped", None)
    assert transform(row(0, None, 2), both_unsafe="by_severity") == ("dropped", None)
    # drop/keep as before; the old bool still means keep.
    assert transform(row(0, 3, 1)) == ("dropped", None)
    assert transform(row(0, 3, 1), keep_both_unsafe=True) == ("kept", 0)
    assert transform(row(0, 3, 1), both_unsafe="keep") == ("kept", 0)
    # Safe answers: by_severity changes nothing.
    assert transform(row(0, 3, 0, (False, True)), both_unsafe="by_severity") == ("swapped", 1)
    pairs, stats = build_pairs([row(0, 3, 1), row(0, 2, 2)], both_unsafe="by_severity")
    assert (stats["swapped"], stats["dropped"], stats["both_unsafe"]) == (1, 1, 2)
    assert pairs[0].meta["severity"] == [1, 3] and pairs[0].meta["harm_categories"] == [
        ["Drugs"], ["Violence"]]
    assert pairs[0].chosen_unsafe and pairs[0].rejected_unsafe


# --- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("values,message", [
    ({"delta_by_severity": {4: 1.0}}, "delta_by_severity: unknown severity level 4; allowed: "
                                      "0, 1, 2, 3"),
    ({"delta_by_severity": {"high": 1.0}}, "unknown severity level 'high'; allowed: 0, 1, 2, 3"),
    ({"delta_by_severity": {-1: 1.0}}, "unknown severity level -1"),
    ({"delta_by_severity": {2: -1.0}}, "delta_by_severity: the Delta of '2' must be a number >= 0"),
    ({"delta_by_category": {"Violence": "x"}}, "the Delta of 'Violence' must be a number"),
    ({"both_unsafe": "rank"}, "unknown both_unsafe 'rank'; choose one of: drop, keep, "
                              "by_severity"),
    ({"both_unsafe": "by_severity", "keep_both_unsafe": True}, "contradict"),
    ({"both_unsafe": "by_severity", "view": "helpful"}, "applies to view 'safedpo' only"),
    ({"adaptive_delta_target": 1.0, "adaptive_delta_lr": 0.0}, "adaptive_delta_lr must be > 0"),
    ({"delta_by_severity": {3: 20}, "loss_type": "dpo"}, "delta_by_severity sets a safety "
                                                          "margin, which loss_type 'dpo'"),
])
def test_bad_margin_settings_are_one_line_config_errors(values, message):
    with pytest.raises(ConfigError, match=None) as e:
        load_config(None, [], **values)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_maps_from_the_command_line_and_yaml(tmp_path):
    cfg = load_config(None, ["--delta_by_severity", "{1: 2, 3: 20}", "--delta_by_category",
                             "{Violence: 20}", "--both_unsafe", "by_severity"])
    assert cfg.delta_by_severity == {1: 2, 3: 20} and cfg.delta_by_category == {"Violence": 20}
    path = tmp_path / "c.yaml"
    path.write_text("delta_by_severity: {'3': 20}\n")  # a string key (JSON-style) works too
    assert PairMargins(load_config(path), PAIRS).margin(IDX)[0].item() == 20.0


def test_unknown_category_is_caught_when_the_data_loads():
    cfg = TrainConfig(delta_by_category={"Violance": 3.0})
    with pytest.raises(ConfigError) as e:
        check_margin_labels(cfg, PAIRS)
    assert str(e.value) == ("delta_by_category: unknown harm category 'Violance' (did you mean "
                            "'Violence'?); the data has: Cybercrime, Drugs, Violence")
    check_margin_labels(TrainConfig(delta_by_category={"Drugs": 3.0}), PAIRS)
    assert data_categories(PAIRS) == ["Cybercrime", "Drugs", "Violence"]
    with pytest.raises(ConfigError, match="the data has no harm categories"):
        check_margin_labels(TrainConfig(adaptive_delta_target=1.0), [pair(False, True)])
