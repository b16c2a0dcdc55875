"""The anytime-valid tests of pipeline.sequential against known cases.

An e-value must have expectation at most 1 under the null (checked exactly,
by enumerating every way the canary's sample can fall); the sequential
p-value must keep its level over every look (checked by simulation), never
increase, and find a known shift.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pipeline.sequential import (
    LAMBDAS,
    SequentialTest,
    log_e_rate,
    log_e_values,
    rank_scores,
    upper_tail_scores,
)

GAMMA = (1 + 0.01) / (1 - 0.01)  # the sketches' bin width at 1 % accuracy


def categories(canary_values: np.ndarray, control_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canary and pooled counts per occupied sketch bin, ascending (as evidence.py builds them)."""
    both = np.concatenate((canary_values, control_values))
    bins, at = np.unique(np.ceil(np.log(both) / math.log(GAMMA)), return_inverse=True)
    pooled = np.bincount(at, minlength=len(bins)).astype(np.float64)
    canary = np.bincount(at[:len(canary_values)], minlength=len(bins)).astype(np.float64)
    return canary, pooled


def latency_log_e(canary_values: np.ndarray, control_values: np.ndarray, q: float = 0.95) -> np.ndarray:
    canary, pooled = categories(canary_values, control_values)
    return np.concatenate((log_e_values(canary, pooled, rank_scores(pooled)),
                           log_e_values(canary, pooled, upper_tail_scores(pooled, q))))


# --------------------------------------------------------------------------- one window


@pytest.mark.parametrize("values", [(1, 2, 3, 4, 5, 6), (1, 1, 2, 5, 5, 9, 9, 9), (3, 3, 3, 7)])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_e_value_has_expectation_at_most_one_over_every_canary_subset(values: tuple[int, ...],
                                                                      n: int) -> None:
    """Exact: under the null the canary's n values are a uniform subset of the pooled ones."""
    pooled_values = np.array(values, dtype=np.float64)
    cats, at = np.unique(pooled_values, return_inverse=True)
    pooled = np.bincount(at).astype(np.float64)
    for scores in (rank_scores(pooled), upper_tail_scores(pooled, 0.5)):
        total = np.zeros(len(LAMBDAS))
        subsets = list(itertools.combinations(range(len(values)), n))
        for subset in subsets:
            canary = np.bincount(at[list(subset)], minlength=len(cats)).astype(np.float64)
            total += np.exp(log_e_values(canary, pooled, scores))
        assert (total / len(subsets) <= 1 + 1e-12).all(), total / len(subsets)


def fisher_lr(x: int, n: int, control_n: int, k: int, lam: float) -> float:
    """Fisher's noncentral hypergeometric pmf at odds exp(lam) over the central one, by brute force."""
    support = range(max(0, k - control_n), min(n, k) + 1)
    weights = {y: math.comb(n, y) * math.comb(control_n, k - y) for y in support}
    return math.exp(lam * x) * sum(weights.values()) / sum(w * math.exp(lam * y) for y, w in weights.items())


@pytest.mark.parametrize(("bad", "n", "control_bad", "control_n"),
                         [(3, 10, 2, 90), (0, 5, 4, 5), (7, 40, 1, 60), (2, 2, 0, 3)])
def test_rate_e_value_is_the_fisher_likelihood_ratio(bad: int, n: int, control_bad: int,
                                                     control_n: int) -> None:
    got = log_e_rate(bad, n, control_bad, control_n)
    want = [math.log(fisher_lr(bad, n, control_n, bad + control_bad, lam)) for lam in LAMBDAS]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_rate_e_value_has_expectation_one_when_the_variants_are_alike() -> None:
    n, control_n, k = 12, 30, 9
    total = math.comb(n + control_n, k)
    mean = sum(math.comb(n, x) * math.comb(control_n, k - x) / total
               * np.exp(log_e_rate(x, n, k - x, control_n)) for x in range(0, k + 1))
    assert mean == pytest.approx(np.ones(len(LAMBDAS)), rel=1e-9)


def test_either_side_of_a_large_canary_share_is_a_valid_e_value() -> None:
    """A canary holding most of the window: the bound is taken on the control's side, still <= 1."""
    values = (1, 2, 2, 3, 5, 8, 13)
    cats, at = np.unique(np.array(values, dtype=np.float64), return_inverse=True)
    pooled = np.bincount(at).astype(np.float64)
    total = np.zeros(len(LAMBDAS))
    subsets = list(itertools.combinations(range(len(values)), 5))  # canary 5 of 7
    for subset in subsets:
        canary = np.bincount(at[list(subset)], minlength=len(cats)).astype(np.float64)
        total += np.exp(log_e_values(canary, pooled, rank_scores(pooled)))
    assert (total / len(subsets) <= 1 + 1e-12).all(), total / len(subsets)
    slow = np.bincount(at[2:], minlength=len(cats)).astype(np.float64)  # the canary holds the 5 largest
    assert log_e_values(slow, pooled, rank_scores(pooled)).max() > 0


def test_rank_scores_are_centred_mid_ranks() -> None:
    scores = rank_scores(np.array([2.0, 1.0, 1.0]))  # values a a b c
    assert scores.tolist() == pytest.approx([1 / 4 - 1 / 2, 2.5 / 4 - 1 / 2, 3.5 / 4 - 1 / 2])
    assert float(scores @ np.array([2.0, 1.0, 1.0])) == pytest.approx(0.0)


def test_upper_tail_scores_mark_categories_wholly_above_the_quantile() -> None:
    assert upper_tail_scores(np.array([5.0, 3.0, 1.0, 1.0]), 0.8).tolist() == [0, 0, 1, 1]
    assert upper_tail_scores(np.array([5.0, 3.0, 1.0, 1.0]), 0.9).tolist() == [0, 0, 0, 1]


def test_a_window_with_one_variant_only_is_no_evidence() -> None:
    pooled = np.array([4.0, 6.0])
    assert (log_e_values(pooled, pooled, rank_scores(pooled)) == 0).all()
    assert (log_e_values(np.zeros(2), pooled, rank_scores(pooled)) == 0).all()


# --------------------------------------------------------------------------- across windows


def simulate(seed: int, windows: int, factor: float = 1.0, onset: int = 0, canary_n: int = 20,
             control_n: int = 400, sigma: float = 0.8) -> list[float]:
    """p-values after each window of lognormal latencies, the canary slower by `factor` from `onset`."""
    return [p for p, _ in looks(seed, windows, factor, onset, canary_n, control_n, sigma)]


def looks(seed: int, windows: int, factor: float = 1.0, onset: int = 0, canary_n: int = 20,
          control_n: int = 400, sigma: float = 0.8) -> list[tuple[float, float]]:
    """(p-value, p-value of a plain product over all windows) after each window."""
    rng = np.random.default_rng(seed)
    test = SequentialTest(2 * len(LAMBDAS))
    product, best = np.zeros(2 * len(LAMBDAS)), 0.0
    out = []
    for t in range(windows):
        drift = 0.3 * math.sin(t / 3)  # load that moves both variants alike
        canary = rng.lognormal(7.0 + drift, sigma, rng.poisson(canary_n) + 1)
        control = rng.lognormal(7.0 + drift, sigma, rng.poisson(control_n) + 1)
        if t >= onset:
            canary *= factor
        log_e = latency_log_e(canary, control)
        test.update(log_e)
        product += log_e
        best = max(best, float(np.logaddexp.reduce(product)) - math.log(len(product)))
        out.append((test.p_value, min(1.0, math.exp(-best))))
    return out


def test_type_one_error_holds_over_every_look() -> None:
    """A/A: the chance that p ever drops below alpha over 40 looks stays below alpha."""
    runs, alpha = 400, 0.05
    crossed = sum(min(simulate(seed, 40)) < alpha for seed in range(runs))
    # Ville's bound is alpha; allow three standard errors of the simulation on top
    assert crossed / runs <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs), crossed


def test_p_value_never_increases_over_looks() -> None:
    for seed in range(20):
        ps = simulate(seed, 30, factor=1.2 if seed % 2 else 1.0, onset=10)
        assert all(b <= a for a, b in itertools.pairwise(ps)), ps
        assert all(0 < p <= 1 for p in ps)


def test_power_against_a_known_shift() -> None:
    """Canary 1.6x slower, 20 warm requests a window against 400: found within a few windows."""
    found = [next((t for t, p in enumerate(simulate(seed, 20, factor=1.6)) if p < 0.01), None)
             for seed in range(20)]
    assert all(t is not None and t < 8 for t in found), found


def test_a_faster_canary_is_no_evidence_one_sided() -> None:
    assert min(simulate(3, 20, factor=0.6)) == 1.0


def test_a_late_regression_is_found_despite_a_long_healthy_start() -> None:
    """The mixture over start windows against a plain product over the stage: 60 healthy looks first."""
    def first(ps: list[float]) -> int:
        return next(t for t, p in enumerate(ps) if p < 0.01) - 60
    mixture, product = [], []
    for seed in range(10):
        ps = looks(seed, 100, factor=1.6, onset=60)
        mixture.append(first([p for p, _ in ps]))
        product.append(first([p for _, p in ps]))
    assert max(mixture) <= 10, mixture
    assert 2 * sorted(mixture)[5] <= sorted(product)[5], (mixture, product)


def test_a_tail_only_regression_is_found() -> None:
    """One canary request in ten three times slower: the rank family alone would take long."""
    rng = np.random.default_rng(5)
    test = SequentialTest(2 * len(LAMBDAS))
    for _ in range(30):
        canary = rng.lognormal(7.0, 0.5, 60)
        canary[rng.random(60) < 0.1] *= 3
        test.update(latency_log_e(canary, rng.lognormal(7.0, 0.5, 600)))
        if test.p_value < 0.01:
            break
    assert test.p_value < 0.01, test.looks


def test_state_round_trips_through_pickle() -> None:
    import pickle
    test = SequentialTest(len(LAMBDAS))
    test.update(np.linspace(-1, 2, len(LAMBDAS)))
    again = pickle.loads(pickle.dumps(test))
    assert (again.looks, again.best, again.log_a.tolist()) == (test.looks, test.best, test.log_a.tolist())


# --------------------------------------------------------------------------- rates (errors, cache misses)


def rate_p_values(seed: int, windows: int, ratio: float = 1.0, n: int = 200,
                  control_n: int = 2000) -> list[float]:
    """p-values of the one-sided rate test; the base rate drifts from window to window (shared by both)."""
    rng = np.random.default_rng(seed)
    test = SequentialTest(len(LAMBDAS))
    out = []
    for t in range(windows):
        base = 0.01 * (1 + 0.8 * math.sin(t / 2))  # outages and quiet hours hit both variants alike
        bad, control_bad = rng.binomial(n, min(1.0, base * ratio)), rng.binomial(control_n, base)
        test.update(log_e_rate(int(bad), n, int(control_bad), control_n))
        out.append(test.p_value)
    return out


def test_rate_test_keeps_its_level_over_every_look_with_a_drifting_base_rate() -> None:
    runs, alpha = 400, 0.05
    crossed = sum(min(rate_p_values(seed, 40)) < alpha for seed in range(runs))
    assert crossed / runs <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs), crossed


def test_rate_test_finds_a_doubled_error_rate_and_ignores_a_halved_one() -> None:
    never = 40
    found = [next((t for t, p in enumerate(rate_p_values(seed, 40, ratio=2.0)) if p < 0.01), never)
             for seed in range(20)]
    assert never not in found, found  # 200 canary requests a window at about 1 %
    assert sorted(found)[10] <= 10, found
    assert all(min(rate_p_values(seed, 40, ratio=0.5)) == 1.0 for seed in range(10))
