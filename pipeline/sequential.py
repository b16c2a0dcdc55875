"""Anytime-valid two-sample tests over window summaries: e-values and sequential p-values.

A gate that compares the canary with the control at every window close looks
at the data many times; with a fixed-sample test each look is another chance
of a false alarm, and a healthy release is stopped more often the more often
it is judged.  Here each ratio or rate gate keeps a test whose p-value is
valid at every look at once (anytime-valid), in the line of Lindon, Sanden
and Shirikian, "Rapid Regression Detection in Software Deployments through
Sequential Testing" (KDD 2022) and Lindon and Malek, "Anytime-Valid Inference
for Multinomial Count Data" (NeurIPS 2022).

One window (an e-value).  The null hypothesis is that within the window the
canary's and the control's observations are exchangeable: drawn from one
distribution, whatever it is, and it may change from window to window (load,
time of day) as long as both variants share it.  Given the window's pooled
sample, the canary's n observations are then a sample without replacement of
n out of the N pooled.  For any scores a_i computed from the pooled sample and
S the sum of the canary's scores, Hoeffding (1963, Theorem 4) gives
E[exp(lam S)] <= M(lam)^n with M(lam) = mean_i exp(lam a_i), so

    e(lam) = exp(lam S) / M(lam)^n

has expectation at most 1 under the null, conditionally on every earlier
window.  lam > 0 makes the test one-sided: large canary scores (slower, more
errors, more cache misses) are evidence.  Observations come as counts per
category (a sketch bin, or error / no error), so S and M cost one pass over
the occupied categories, not over the requests.

Across windows (a test martingale).  For each lam and each window s where the
regression might have begun, prod_{u=s..t} e_u(lam) is a nonnegative
martingale with mean 1 under the null; so is any mixture of them.  With equal
weights over LAMBDAS and weight w_s = 1/(s(s+1)) on start s (they sum to 1):

    M_t = mean_lam A_t(lam) + 1/(t+1),    A_t(lam) = (A_{t-1}(lam) + w_t) e_t(lam)

Ville's inequality bounds P(sup_t M_t >= 1/alpha) by alpha, so
p_t = min(1, 1 / max_{u<=t} M_u) is a p-value valid at every look, and it
never increases.  Mixing over starts keeps the test quick on a regression
that begins late in a stage: a start at window s costs log(s(s+1)) of
evidence, instead of everything the healthy windows before it took away from
a product over the whole stage.

What the guarantee assumes: requests independent of each other given the
window, and a variant assignment that does not depend on the request's
outcome.  The per-window conditioning makes it robust to traffic that drifts
over the stage and to a traffic split that changes, as long as both variants
see the same conditions within a window.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

# One-sided tilts mixed with equal weight: small ones find small shifts over many windows,
# large ones find large shifts at once (rank scores span 1, so lam = 8 is a strong effect).
LAMBDAS = np.array([0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0])

Floats = npt.NDArray[np.float64]


def log_e_values(canary: Floats, pooled: Floats, scores: Floats) -> Floats:
    """log e(lam) for every lam in LAMBDAS, for one window.

    `pooled[k]` observations of both variants fell in category k, `canary[k]`
    of them the canary's; `scores[k]` is the score of category k, computed from
    the pooled counts alone.  A window where either variant has nothing gives
    log e = 0 (no evidence either way).

    Hoeffding's bound is tightest for a small sample of a large population, so
    when the canary holds more than half of the window the bound is applied
    to the control's sample instead (low control scores are the same evidence
    as high canary ones); which side is used depends on the counts alone.
    """
    n = float(canary.sum())
    total = float(pooled.sum())
    if n <= 0 or n >= total:
        return np.zeros(len(LAMBDAS))
    occupied = pooled > 0
    if not occupied.all():
        canary, pooled, scores = canary[occupied], pooled[occupied], scores[occupied]
    if 2 * n > total:
        n, canary, tilts = total - n, pooled - canary, -LAMBDAS
    else:
        tilts = LAMBDAS
    tilt = tilts[:, None] * scores[None, :]
    top = tilt.max(axis=1)
    log_mgf = top + np.log((pooled[None, :] * np.exp(tilt - top[:, None])).sum(axis=1) / total)
    result: Floats = tilts * float(canary @ scores) - n * log_mgf
    return result


def log_e_rate(bad: int, n: int, control_bad: int, control_n: int) -> Floats:
    """log e(lam) for every lam in LAMBDAS of 'the canary's outcomes are bad more often', one window.

    Exact, not a bound: given the window's requests of each variant and its
    bad outcomes (errors, cache misses) in all, the canary's share of the bad
    ones is hypergeometric when both variants are alike, and e(lam) =
    exp(lam x) / E[exp(lam X)] is the likelihood ratio of Fisher's
    noncentral hypergeometric distribution at odds ratio exp(lam) against 1:
    the bad outcomes split by the variants' request shares.  Its expectation
    is 1 when the variants are alike and below 1 when the canary is better.
    """
    total, k = n + control_n, bad + control_bad
    lo, hi = max(0, k - control_n), min(n, k)
    if n == 0 or control_n == 0 or lo == hi:
        return np.zeros(len(LAMBDAS))
    x = np.arange(lo, hi + 1, dtype=np.float64)
    # log pmf up to a constant, from the ratio of successive terms
    steps = np.log(n - x[:-1]) + np.log(k - x[:-1]) - np.log(x[:-1] + 1) - np.log(total - n - k + x[:-1] + 1)
    log_pmf = np.concatenate(([0.0], np.cumsum(steps)))
    tilted = log_pmf[None, :] + LAMBDAS[:, None] * x[None, :]
    top = tilted.max(axis=1)
    log_mgf = top + np.log(np.exp(tilted - top[:, None]).sum(axis=1))
    base = float(log_pmf.max())
    log_norm = base + math.log(float(np.exp(log_pmf - base).sum()))
    result: Floats = LAMBDAS * bad - (log_mgf - log_norm)
    return result


def rank_scores(pooled: Floats) -> Floats:
    """Wilcoxon scores of ordered categories: pooled mid-rank / N - 1/2 (ties share one)."""
    total = pooled.sum()
    below = np.cumsum(pooled) - pooled
    scores: Floats = (below + pooled / 2) / total - 0.5
    return scores


def upper_tail_scores(pooled: Floats, q: float) -> Floats:
    """1 for ordered categories wholly above the pooled q-quantile, else 0.

    Rank scores weigh the whole distribution; a regression in the tail alone
    (a slow dependency hit by one request in ten) moves them little, and the
    tail is what a p95 gate is about.
    """
    below = np.cumsum(pooled) - pooled
    scores: Floats = (below >= q * pooled.sum()).astype(np.float64)
    return scores


class SequentialTest:
    """One anytime-valid test: e-values of successive windows in, a p-value out.

    `width` e-values per window (one per tilt of each score family) are mixed
    with equal weights.  The state is a few floats, pickled with the engine.
    """

    __slots__ = ("best", "log_a", "looks")

    def __init__(self, width: int) -> None:
        self.looks = 0
        self.log_a = np.full(width, -math.inf)  # log A_t per component (-inf: no start yet)
        self.best = 0.0  # log of the largest M_t seen (M_0 = 1)

    def update(self, log_e: Floats) -> None:
        """Add one window's log e-values (zeros: a window without data on one side)."""
        self.looks += 1
        t = self.looks
        self.log_a = np.logaddexp(self.log_a, -math.log(t * (t + 1))) + log_e
        mixed = float(np.logaddexp.reduce(self.log_a)) - math.log(len(self.log_a))
        self.best = max(self.best, float(np.logaddexp(mixed, -math.log(t + 1))))

    @property
    def p_value(self) -> float:
        """min(1, 1 / max M): valid at every look, never increasing."""
        # M_t of windows without evidence is 1 up to rounding: no evidence reads as p = 1 exactly
        return math.exp(-self.best) if self.best > 1e-9 else 1.0

    def __getstate__(self) -> tuple[int, Floats, float]:
        return self.looks, self.log_a, self.best

    def __setstate__(self, state: tuple[int, Floats, float]) -> None:
        self.looks, self.log_a, self.best = state


__all__ = ["LAMBDAS", "SequentialTest", "log_e_rate", "log_e_values", "rank_scores", "upper_tail_scores"]
