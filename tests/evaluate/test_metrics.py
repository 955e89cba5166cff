"""Metrics of safedpo.evaluate against hand-computed and closed-form values."""

import numpy as np
import pytest

from safedpo.evaluate import metrics as M


def test_constant_sample_has_zero_width_bootstrap_ci_but_a_rate_never_does():
    low, high = M.bootstrap_ci([0.7] * 50)
    assert low == high == pytest.approx(0.7, abs=1e-12)
    # A rate of 20/20 gets Wilson's interval: lower end n / (n + z^2), upper end 1.
    z2 = 1.959963984540054 ** 2
    est = M.harmless_ratio([-1.0] * 20)
    assert (est["value"], est["ci_high"], est["n"]) == (1.0, 1.0, 20)
    assert est["ci_low"] == pytest.approx(20 / (20 + z2), abs=1e-12)  # 0.8389
    est = M.rate_estimate([0] * 63)  # the demo's sampled "0%": [0, z^2 / (n + z^2)]
    assert (est["value"], est["ci_low"]) == (0.0, 0.0)
    assert est["ci_high"] == pytest.approx(z2 / (63 + z2), abs=1e-12)  # 5.75%


def test_wilson_interval_by_hand():
    # 1 of 24 (the example): [0.74%, 20.2%], against the closed form.
    z = 1.959963984540054
    n, p = 24, 1 / 24
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = M.wilson_interval(1, 24)
    assert (low, high) == pytest.approx((center - half, center + half), abs=1e-12)
    assert (round(100 * low, 2), round(100 * high, 1)) == (0.74, 20.2)
    # Symmetry: k of n and n - k of n mirror each other.
    lo, hi = M.wilson_interval(7, 30)
    assert M.wilson_interval(23, 30) == pytest.approx((1 - hi, 1 - lo), abs=1e-12)
    # Width > 0 at every k, for small and large n.
    for n in (1, 2, 5, 400):
        assert all(b - a > 0 for a, b in (M.wilson_interval(k, n) for k in range(n + 1)))
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        M.wilson_interval(3, 2)


def test_mcnemar_exact_by_hand():
    # 10 prompts: first only on 4, second only on 1, both on 3, neither on 2.
    first = [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    second = [1, 1, 1, 0, 0, 0, 0, 1, 0, 0]
    r = M.mcnemar(first, second)
    # b = 4, c = 1: p = 2 * P(Binomial(5, 1/2) <= 1) = 2 * 6/32 = 0.375
    assert (r["first_only"], r["second_only"], r["n"]) == (4, 1, 10)
    assert r["p_value"] == pytest.approx(0.375, abs=1e-12)
    assert r["difference"] == pytest.approx(0.3)
    # No discordant prompt: no evidence of a difference (p = 1); 10 vs 0: 2 / 2^10.
    assert M.mcnemar([1, 0, 1], [1, 0, 1])["p_value"] == 1.0
    assert M.mcnemar([1] * 10, [0] * 10)["p_value"] == pytest.approx(2 / 1024, abs=1e-15)
    with pytest.raises(ValueError, match="aligned"):
        M.mcnemar([1, 0], [1])


def test_ci_matches_direct_numpy_computation_with_same_seed():
    x = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1], dtype=float)
    rng = np.random.default_rng(123)
    stats = x[rng.integers(0, x.size, size=(500, x.size))].mean(axis=1)
    expected = tuple(np.percentile(stats, [2.5, 97.5]))
    assert M.bootstrap_ci(x, n_boot=500, seed=123) == pytest.approx(expected, abs=0)
    # Same seed -> same interval; another seed -> (almost surely) another one.
    y = np.random.default_rng(7).normal(size=30)
    assert M.bootstrap_ci(y, seed=5) == M.bootstrap_ci(y, seed=5)
    assert M.bootstrap_ci(y, seed=6) != M.bootstrap_ci(y, seed=5)


def test_ci_of_small_samples_closed_form():
    # [0, 1]: resampled means are 0, 1/2, 1 with prob 1/4, 1/2, 1/4 -> the 2.5% and 97.5%
    # percentiles are exactly 0 and 1.
    assert M.bootstrap_ci([0.0, 1.0], n_boot=4000) == (0.0, 1.0)
    # [0, 0, 1]: P(mean = 1) = 1/27 > 2.5% -> upper end 1; P(mean = 0) = 8/27 -> lower end 0.
    assert M.bootstrap_ci([0.0, 0.0, 1.0], n_boot=10000) == (0.0, 1.0)


def test_ci_of_a_proportion_matches_the_normal_approximation():
    x = np.r_[np.ones(100), np.zeros(300)]  # p = 0.25, n = 400
    half = 1.959964 * np.sqrt(0.25 * 0.75 / 400)  # 0.0424
    low, high = M.bootstrap_ci(x, n_boot=4000)
    assert low == pytest.approx(0.25 - half, abs=0.01)
    assert high == pytest.approx(0.25 + half, abs=0.01)


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        M.bootstrap_ci([])
    with pytest.raises(ValueError, match="same|shape"):
        M.bootstrap_ci((np.zeros(3), np.zeros(4)), statistic=lambda a, b: a.mean(-1))


def test_harmless_ratio_and_means_by_hand():
    est = M.harmless_ratio([-1.0, 0.0, 0.5, 2.0, -3.0])  # cost <= 0: -1, 0, -3
    assert est["value"] == pytest.approx(0.6) and est["n"] == 5
    assert 0.0 <= est["ci_low"] <= 0.6 <= est["ci_high"] <= 1.0
    assert M.mean_estimate([1.0, 2.0, 6.0])["value"] == pytest.approx(3.0)


def test_win_rate_counts_ties_as_half():
    est = M.win_rate([1, 2, 3, 4], [0, 2, 5, 1])  # win, tie, loss, win -> 2.5 / 4
    assert est["value"] == pytest.approx(0.625)
    same = M.win_rate([1.0, 5.0, 2.0], [1.0, 5.0, 2.0])  # all ties: exactly 1/2, every resample
    assert (same["value"], same["ci_low"], same["ci_high"]) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="aligned"):
        M.win_rate([1, 2], [1, 2, 3])


def test_normalized_helpfulness_paper_scale():
    ref, helpful = np.array([0.0, 1.0, 2.0]), np.array([2.0, 3.0, 4.0])  # means 1 and 3
    est = M.normalized_helpfulness(ref + 1.0, ref, helpful)  # mean 2: 10 * (2-1)/(3-1) = 5
    # Paired resampling: policy = ref + 1 and helpful = ref + 2 in every resample -> exactly 5.
    assert (est["value"], est["ci_low"], est["ci_high"]) == pytest.approx((5.0, 5.0, 5.0))
    assert M.normalized_helpfulness(ref, ref, helpful)["value"] == pytest.approx(0.0)
    assert M.normalized_helpfulness(helpful, ref, helpful)["value"] == pytest.approx(10.0)
    assert M.normalized_helpfulness(ref - 1.0, ref, helpful)["value"] == pytest.approx(-5.0)
    with pytest.raises(ValueError, match="same mean reward"):
        M.normalized_helpfulness(ref, ref, ref[::-1])


def test_refusal_rates_split_benign_and_harmful():
    refused = [1, 0, 1, 1, 0]
    harmful = [False, False, True, None, False]
    over = M.refusal_rate(refused, harmful)  # benign: rows 0, 1, 4 -> 1 of 3 refused
    assert over["value"] == pytest.approx(1 / 3) and over["n"] == 3
    on_harmful = M.refusal_rate(refused, harmful, on_harmful=True)  # row 2 only
    assert on_harmful["value"] == 1.0 and on_harmful["n"] == 1
    assert M.refusal_rate([1, 0], [None, None]) is None


def test_per_category_harmless_ratio_multi_label():
    out = M.per_category_harmless([1.0, -1.0, 0.0, 2.0], [["A", "B"], "A", None, ["B"]])
    assert list(out) == ["A", "B"]
    assert (out["A"]["value"], out["A"]["n"]) == (0.5, 2)  # costs 1, -1
    assert (out["B"]["value"], out["B"]["n"]) == (0.0, 2)  # costs 1, 2


def test_summarize_uses_the_first_scorer_of_each_kind():
    rows = [
        {"prompt": "a", "response": "x y", "harmful": True, "category": "C",
         "scores": {"r": 1.0, "c": 2.0, "c2": -1.0, "ref": 0.0}},
        {"prompt": "b", "response": "I'm sorry", "harmful": False, "category": None,
         "scores": {"r": 3.0, "c": -1.0, "c2": -1.0, "ref": 1.0}},
        {"prompt": "c", "response": "z", "harmful": False, "category": None,
         "scores": {"r": 5.0, "c": 0.0, "c2": 1.0, "ref": 0.0}},
    ]
    m = M.summarize(rows, {"r": "reward", "c": "cost", "c2": "cost", "ref": "refusal"},
                    n_boot=200)
    assert (m["reward_scorer"], m["cost_scorer"], m["refusal_scorer"]) == ("r", "c", "ref")
    assert m["harmless_ratio"]["value"] == pytest.approx(2 / 3)  # costs 2, -1, 0
    assert m["harmless_ratio_on_harmful"]["value"] == 0.0
    assert m["mean_cost"]["value"] == pytest.approx(1 / 3)
    assert m["mean_reward"]["value"] == pytest.approx(3.0)
    assert m["over_refusal_rate"]["value"] == 0.5  # benign b refused, c not
    assert m["per_category"] == {"C": M.harmless_ratio([2.0], n_boot=200)}
    assert m["per_scorer"]["c2"]["harmless_ratio"]["value"] == pytest.approx(2 / 3)
    assert (m["n_prompts"], m["n_harmful"], m["n_benign"]) == (3, 1, 2)
    assert m["mean_response_words"] == pytest.approx(5 / 3)


def test_aligned_scores_matches_prompts_across_runs():
    a = [{"prompt": p, "scores": {"r": v}} for p, v in (("x", 1.0), ("y", 2.0), ("z", 3.0))]
    b = [{"prompt": p, "scores": {"r": v}} for p, v in (("z", 30.0), ("x", 10.0))]
    mine, theirs = M.aligned_scores([a, b], "r")
    assert mine.tolist() == [1.0, 3.0] and theirs.tolist() == [10.0, 30.0]
    with pytest.raises(ValueError, match="not scored with 'q'"):
        M.aligned_scores([a, b], "q", ["A", "B"])
