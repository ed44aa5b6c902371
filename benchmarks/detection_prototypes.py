"""NumPy prototypes of the detection candidates tried for issue 12 (README, *Held-out candidates*).

Batch versions of estimators that the tree could keep from mergeable moments: the plain and the
trimmed (one-step, two-step) Mahalanobis distance, OAS shrinkage of the trimmed correlation, an
eigenvalue floor on it, a per-component Student-t score, rank and Cauchy fusion with ECOD-like tail
evidence, a k-means/BIC mixture, the nonparanormal (Gaussian-copula) distance and likelihood with
the CDF exact, winsorized or read from a quantile sketch, and feature bagging over the trimmed
moments (``bag*``: per-subset chi-square p-values on submatrices of the trimmed covariance, Cauchy-
or mean-log-combined), LODA (``loda*``: sparse random projections with fixed-grid histograms, alone
and fused with the trimmed distance), Shyu et al.'s principal component classifier (``pcc*``) and
Half-Space Trees (``hst*``: mass counts of random midpoint-split trees over a fixed work space,
alone and fused with the trimmed distance; :func:`hst_check` checks their exactness). Not
leave-one-out (a negligible difference for ranking: the
prototypes give ``mahalanobis`` 0.790 / 0.364 and ``robust`` 0.801 / 0.398 on ADBench, the tree's
figures to 0.001). Run::

    python benchmarks/detection_prototypes.py synthetic robust,robust2,floor05_2 --reps 3
    python benchmarks/detection_prototypes.py adbench robust2,floor05_2
    OPENBLAS_NUM_THREADS=1 python benchmarks/detection_prototypes.py cost 10,30,100 --agents 100000

(``cost``: feature bagging's extra work per round beside the tree's ``robust`` ``score_many``,
:func:`bag_cost`, or with ``--candidate loda`` / ``hst`` the LODA / HS-Trees fusion's,
:func:`loda_cost` / :func:`hst_cost`; its "methods" are the feature counts.)

``--shuffle`` scores the rows in a seeded random order: ADBench's files and the synthetic worlds put
the anomalies last / first, so a score that depends on the row order shows it there.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.metrics import average_precision_score, roc_auc_score

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_synthetic_detection import WORLDS  # noqa: E402


def moments(X, w=None):
    if w is None:
        w = np.ones(len(X), bool)
    Z = X[w]
    mu = Z.mean(0)
    S = np.cov(Z.T, ddof=1)
    return len(Z), mu, np.atleast_2d(S)

def reg_cov(n, S, shrink="auto"):
    d = S.shape[0]
    lam = min(1.0, d / n) if shrink == "auto" else shrink
    t = np.diag(S)
    T = np.diag(t)
    return (1 - lam) * S + lam * T + 1e-9 * np.diag(np.maximum(t, 1e-12 * max(t.mean(), 1e-300)))

def oas_corr(n, S):
    """OAS (Chen, Wiesel, Eldar & Hero 2010) on the correlation matrix: shrink toward identity = toward diag(S)."""
    d = S.shape[0]
    sd = np.sqrt(np.maximum(np.diag(S), 1e-300))
    R = S / np.outer(sd, sd)
    tr2 = np.trace(R @ R)
    tr = float(d)
    num = (1 - 2 / d) * tr2 + tr * tr
    den = (n + 1 - 2 / d) * (tr2 - tr * tr / d)
    rho = 1.0 if den <= 0 else min(1.0, num / den)
    return rho

def dist(X, n, mu, C):
    E = X - mu
    L = np.linalg.cholesky(C)
    Z = np.linalg.solve(L, E.T)
    return (Z * Z).sum(0)

def maha(X):
    n, mu, S = moments(X)
    return dist(X, n, mu, reg_cov(n, S))

def robust(X, steps=1, q=0.975, shrink="auto", oas=False):
    d = X.shape[1]
    thr = stats.chi2.ppf(q, d)
    n, mu, S = moments(X)
    d2 = dist(X, n, mu, reg_cov(n, S))
    for _ in range(steps):
        keep = d2 <= thr
        if keep.sum() < d + 3:
            break
        n, mu, S = moments(X, keep)
        lam = oas_corr(n, S) if oas else shrink
        d2 = dist(X, n, mu, reg_cov(n, S, lam if oas else shrink))
    return d2

def robust_oas(X): return robust(X, oas=True)
def robust2(X): return robust(X, steps=2)

def tails_p(X):
    """ECOD-like two-sided empirical tail per feature, Cauchy-combined."""
    n, d = X.shape
    P = np.empty((n, d))
    for j in range(d):
        x = X[:, j]
        s = np.sort(x)
        L = np.searchsorted(s, x, 'right') / n
        R = (n - np.searchsorted(s, x, 'left')) / n
        P[:, j] = np.minimum(1, 2 * np.minimum(L, R))
    return cauchy(P)

def cauchy(P):
    P = np.clip(P, 1e-300, 0.99)
    T = np.tan((0.5 - P) * np.pi).mean(1)
    return stats.cauchy.sf(T)

def ecod_score(X):
    n, d = X.shape
    Ls = np.empty((n, d))
    Rs = np.empty((n, d))
    for j in range(d):
        x = X[:, j]
        s = np.sort(x)
        Ls[:, j] = np.searchsorted(s, x, 'right') / n
        Rs[:, j] = (n - np.searchsorted(s, x, 'left')) / n
    skew = stats.skew(X, axis=0)
    Sl = -np.log(Ls).sum(1)
    Sr = -np.log(Rs).sum(1)
    Ss = np.where(skew < 0, -np.log(Ls), -np.log(Rs)).sum(1)
    return np.maximum(np.maximum(Sl, Sr), Ss)

def fused(X, base=robust):
    d = X.shape[1]
    d2 = base(X)
    # robust p-value with the consistency factor (ranking: factor is a constant)
    c = 0.975 / stats.chi2.cdf(stats.chi2.ppf(0.975, d), d + 2)
    p1 = stats.chi2.sf(d2 / c, d)
    return -np.log(cauchy(np.column_stack([p1, tails_p(X)])))

def fused_oas(X): return fused(X, robust_oas)

def rankavg(X, base=robust):
    a = stats.rankdata(base(X))
    b = stats.rankdata(ecod_score(X))
    return np.maximum(a, b)  # max-rank fusion

def rankmean(X, base=robust):
    return stats.rankdata(base(X)) + stats.rankdata(ecod_score(X))

def iforest(X):
    from sklearn.ensemble import IsolationForest
    Z = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1)
    return -IsolationForest(random_state=0).fit(Z).score_samples(Z)

METHODS = {"maha": maha, "robust": robust, "robust2": robust2, "robust_oas": robust_oas,
           "fused": fused, "fused_oas": fused_oas, "rank_max": rankavg, "rank_sum": rankmean,
           "ecod": ecod_score, "IForest": iforest}

# ------------------------------------------------------------------ mixture of cohorts (prototype)

def _std(X):
    sd = X.std(0)
    return (X - X.mean(0)) / np.where(sd > 0, sd, 1)

def bic_kmeans(X, kmax=8, min_per_dim=10, seed=0):
    """k by BIC of the hard-assignment Gaussian mixture whose components are the k-means clusters' moments."""
    n, d = X.shape
    Z = _std(X)
    best = (np.inf, 1, np.zeros(n, int))
    for k in range(1, kmax + 1):
        if k == 1:
            lab = np.zeros(n, int)
        else:
            lab = KMeans(k, n_init=3, random_state=seed).fit_predict(Z)
        cnt = np.bincount(lab, minlength=k)
        if cnt.min() < min_per_dim * d:
            break
        ll = 0.0
        for c in range(k):
            nk, mu, S = moments(Z, lab == c)
            C = reg_cov(nk, S)
            _, logdet = np.linalg.slogdet(C)
            ll += nk * np.log(nk / n) - 0.5 * nk * (logdet + d * np.log(2 * np.pi)) - 0.5 * (nk - 1) * d
        npar = k * (d + d * (d + 1) / 2) + k - 1
        bic = -2 * ll + npar * np.log(n)
        if bic < best[0]:
            best = (bic, k, lab)
    return best[1], best[2]

def _robust_p(X, rows_fit, rows_score=None):
    d = X.shape[1]
    c = 0.975 / stats.chi2.cdf(stats.chi2.ppf(0.975, d), d + 2)
    Xs = X[rows_fit]
    d2 = robust(Xs)
    return stats.chi2.sf(d2 / c, d), d2

def mixture(X, base_fused=False):
    n, d = X.shape
    k, lab = bic_kmeans(X)
    p_pop, d2_pop = _robust_p(X, np.arange(n))
    if k == 1:
        return -np.log(np.maximum(p_pop, 1e-300)) + 1e-6 * d2_pop
    p_c = np.ones(n)
    d2_c = np.zeros(n)
    for c in range(k):
        rows = np.flatnonzero(lab == c)
        p_c[rows], d2_c[rows] = _robust_p(X, rows)
    p = np.minimum(1, 2 * np.minimum(p_pop, p_c))
    return -np.log(np.maximum(p, 1e-300)) + 1e-6 * (d2_c)

def mixture_k(X):
    return bic_kmeans(X)[0]

METHODS["mixture"] = mixture

# ------------------------------------------------------------------ per-component Student-t scores
def _trimmed_moments(X, steps=1, q=0.975):
    d = X.shape[1]
    thr = stats.chi2.ppf(q, d)
    n, mu, S = moments(X)
    d2 = dist(X, n, mu, reg_cov(n, S))
    for _ in range(steps):
        keep = d2 <= thr
        if keep.sum() < d + 3:
            break
        n, mu, S = moments(X, keep)
        d2 = dist(X, n, mu, reg_cov(n, S))
    return n, mu, reg_cov(n, S)

def comp_t(X, nu=1.0, steps=1):
    """Sum over the robust covariance's principal components of log(1 + z_j^2 / nu): each whitened
    direction's deviation counted as a Student-t(nu) log-likelihood, so one noisy low-variance
    direction cannot dominate as it does in the sum of squares."""
    n, mu, C = _trimmed_moments(X, steps)
    w, V = np.linalg.eigh(C)
    Z = (X - mu) @ V / np.sqrt(np.maximum(w, 1e-300))
    return np.log1p(Z * Z / nu).sum(1)

METHODS["comp_t1"] = lambda X: comp_t(X, 1.0)
METHODS["comp_t3"] = lambda X: comp_t(X, 3.0)
METHODS["comp_t1_2"] = lambda X: comp_t(X, 1.0, 2)
METHODS["comp_t3_2"] = lambda X: comp_t(X, 3.0, 2)


def eigfloor(X, floor=0.01, steps=1):
    """Robust distance with the trimmed correlation matrix's eigenvalues floored at ``floor`` (mean 1)."""
    n, mu, C = _trimmed_moments(X, steps)
    sd = np.sqrt(np.diag(C))
    R = C / np.outer(sd, sd)
    w, V = np.linalg.eigh(R)
    w = np.maximum(w, floor)
    Z = ((X - mu) / sd) @ V
    return (Z * Z / w).sum(1)

METHODS["floor01"] = lambda X: eigfloor(X, 0.01)
METHODS["floor05"] = lambda X: eigfloor(X, 0.05)
METHODS["floor10"] = lambda X: eigfloor(X, 0.10)
METHODS["floor05_2"] = lambda X: eigfloor(X, 0.05, 2)



def _shuffled(X, y, shuffle):
    """Rows in a seeded random order: a score that depends on the row order (both ADBench's files and
    the synthetic worlds put the anomalies last / first) changes, an honest one does not."""
    if not shuffle:
        return X, y
    p = np.random.default_rng(0).permutation(len(y))
    return X[p], y[p]


def _synthetic(names, reps, shuffle=False):
    print("| method | " + " | ".join(WORLDS) + " | mean |")
    for m in names:
        cells = []
        for make in WORLDS.values():
            got = []
            for rep in range(reps):
                X, y = _shuffled(*make(np.random.default_rng(1000 + rep)), shuffle)
                s = METHODS[m](X)
                got.append((roc_auc_score(y, s), average_precision_score(y, s)))
            cells.append(np.mean(got, 0))
        mean = np.mean(cells, 0)
        print(f"| {m} | " + " | ".join(f"{a:.3f} / {p:.3f}" for a, p in cells) + f" | {mean[0]:.3f} / {mean[1]:.3f} |")


def _adbench(names, folder, shuffle=False):
    rows = {m: [] for m in names}
    seconds = dict.fromkeys(names, 0.0)
    for path in sorted(pathlib.Path(folder).glob("*.npz")):
        with np.load(path) as f:
            X, y = f["X"].astype(float), f["y"].astype(int)
        X, y = _shuffled(X[:, X.std(0) > 0], y, shuffle)
        for m in names:
            t0 = time.perf_counter()
            s = METHODS[m](X)
            seconds[m] += time.perf_counter() - t0
            rows[m].append((roc_auc_score(y, s), average_precision_score(y, s)))
        print(path.stem, " ".join(f"{m} {rows[m][-1][0]:.3f}/{rows[m][-1][1]:.3f}" for m in names), flush=True)
    for m in names:
        a = np.mean(rows[m], 0)
        print(f"{m}: mean ROC-AUC {a[0]:.3f}, mean AP {a[1]:.3f}, {seconds[m]:.1f} s for the 15 sets")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("where", choices=["synthetic", "adbench", "cost"])
    ap.add_argument("methods", help=f"comma-separated, of {', '.join(METHODS)}")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--data", default="/work/shared/data/adbench")
    ap.add_argument("--shuffle", action="store_true", help="score the rows in a seeded random order (row-order leak check)")
    ap.add_argument("--agents", type=int, default=100_000, help="cost: agents per round")
    ap.add_argument("--candidate", choices=["bag", "loda", "hst"], default="bag", help="cost: whose extra work")
    a = ap.parse_args()
    names = [m for m in a.methods.split(",") if m]
    if a.where == "cost":    # methods: comma-separated feature counts, e.g. "10,30,100"
        {"bag": bag_cost, "loda": loda_cost, "hst": hst_cost}[a.candidate](a.agents, [int(v) for v in names])
    elif a.where == "synthetic":
        _synthetic(names, a.reps, a.shuffle)
    else:
        _adbench(names, a.data, a.shuffle)


# ------------------------------------------------------------------ nonparanormal (Gaussian copula)
# Liu, Lafferty & Wasserman (2009), "The nonparanormal", JMLR 10: each feature through its own
# monotone transform z_j = Phi^-1(F_j(x_j)), the dependence Gaussian in z. Mahalanobis is the right
# statistic under a Gaussian model; the copula keeps the Gaussian dependence and lets the marginals
# be skewed, heavy-tailed or discrete, so a heavy-tailed low-variance direction is no longer
# amplified by the whitening (its values are ranks now), while the extremes of a feature still map
# to the largest |z| (Phi^-1(1 - 1/(2n)) for the sample's maximum with mid-ranks).

def _normal_scores_midrank(X):
    """Mid-rank CDF (r - 1/2)/n per feature (ties share their average rank), then Phi^-1."""
    n = len(X)
    return stats.norm.ppf((stats.rankdata(X, axis=0, method="average") - 0.5) / n)


def _normal_scores_winsorized(X):
    """Liu et al.'s truncated ECDF: F_hat = rank/n clipped to [delta, 1 - delta],
    delta = 1 / (4 n^(1/4) sqrt(pi log n)) (their Eq. 8, the rate-optimal truncation)."""
    n = len(X)
    delta = 1.0 / (4.0 * n ** 0.25 * np.sqrt(np.pi * np.log(n)))
    F = stats.rankdata(X, axis=0, method="average") / n
    return stats.norm.ppf(np.clip(F, delta, 1.0 - delta))


def _midrank_from_cdf(below, at_or_below, n):
    """Mid-rank CDF from a sketch's P(X < x) and P(X <= x), kept inside the exact range."""
    u = 0.5 * (below + at_or_below)
    return np.clip(u, 0.5 / n, 1.0 - 0.5 / n)


def _normal_scores_kll(X, k=200):
    """The mid-rank CDF read from one datasketches KLL sketch per feature (k = 200): the
    approximation a streaming tree would read (KLL's additive rank error, ~1.3 % at k = 200)."""
    import datasketches
    n, d = X.shape
    Z = np.empty((n, d))
    for j in range(d):
        sk = datasketches.kll_doubles_sketch(k)
        sk.update(np.ascontiguousarray(X[:, j]))
        distinct, where = np.unique(X[:, j], return_inverse=True)
        below = np.asarray(sk.get_cdf(distinct, False))[:-1]
        at = np.asarray(sk.get_cdf(distinct, True))[:-1]
        Z[:, j] = stats.norm.ppf(_midrank_from_cdf(below, at, n))[where.reshape(-1)]
    return Z


def _normal_scores_tree(X):
    """The mid-rank CDF read from the tree's own per-feature sketches (``FeatureSketches``, two REQ
    sketches per feature, k = 12, as the ``tails`` mode keeps them): P(X <= x) from the left tail,
    P(X < x) = 1 - P(X >= x) from the right."""
    from swarmguard.structures.tail_sketch import FeatureSketches
    n, d = X.shape
    sk = FeatureSketches(d)
    sk.update_many(X)
    t = sk.tail_probabilities(X, members=True)
    return stats.norm.ppf(_midrank_from_cdf(1.0 - t.right, t.left, n))


def copula(X, scores=_normal_scores_midrank, steps=1):
    """Plain (``steps=0``) or trimmed (one-, two-step) Mahalanobis distance in normal-score space."""
    Z = scores(X)
    return maha(Z) if steps == 0 else robust(Z, steps=steps)


METHODS["cop_maha"] = lambda X: copula(X, steps=0)
METHODS["cop_robust"] = lambda X: copula(X, steps=1)
METHODS["cop_robust2"] = lambda X: copula(X, steps=2)
METHODS["cop_win_maha"] = lambda X: copula(X, _normal_scores_winsorized, 0)
METHODS["cop_win_robust"] = lambda X: copula(X, _normal_scores_winsorized, 1)
METHODS["cop_kll_maha"] = lambda X: copula(X, _normal_scores_kll, 0)
METHODS["cop_kll_robust"] = lambda X: copula(X, _normal_scores_kll, 1)
METHODS["cop_kll_robust2"] = lambda X: copula(X, _normal_scores_kll, 2)
METHODS["cop_req_robust"] = lambda X: copula(X, _normal_scores_tree, 1)
METHODS["cop_req_robust2"] = lambda X: copula(X, _normal_scores_tree, 2)


def _log_marginal_density(X):
    """Per-feature log density at each value, the quantile-spacing (k-nearest-order-statistic)
    estimate f(x_(r)) = (hi - lo) / (n (x_(hi) - x_(lo))) over the ranks lo = r - k, hi = r + k (cut
    at the sample's ends), k = ceil(sqrt(n)) (Loftsgaarden & Quesenberry 1965's k ~ sqrt(n)); a
    quantile sketch answers it from Q(u -+ k/n). Tied values (discrete features) would have a zero
    spacing: it is floored at 1e-6 of the feature's range, so a common value is dense, a rare one not.

    The window is centred on each value's *mid-rank*, so tied rows get one density. (Centring it on
    each row's own sort position gives tied rows different densities by their place in the file --
    and ADBench's files, like the synthetic worlds, put the anomalies last / first: a label leak
    through the row order, which the first draft of this function had.)"""
    n, d = X.shape
    k = int(np.ceil(np.sqrt(n)))
    out = np.empty((n, d))
    for j in range(d):
        s, where, counts = np.unique(X[:, j], return_inverse=True, return_counts=True)
        start = np.concatenate(([0], np.cumsum(counts)[:-1]))
        mid = start + 0.5 * (counts - 1)                 # 0-based mid-rank of each distinct value
        lo = np.maximum(np.floor(mid - k), 0).astype(int)
        hi = np.minimum(np.ceil(mid + k), n - 1).astype(int)
        srt = np.repeat(s, counts)                        # the sorted column
        floor = 1e-6 * max(s[-1] - s[0], 1e-300)
        f = (hi - lo) / (n * np.maximum(srt[hi] - srt[lo], floor))
        out[:, j] = np.log(f)[where.reshape(-1)]
    return out


def copula_nll(X, steps=1):
    """-2 log-likelihood of each row under the fitted nonparanormal model (constants dropped).

    Under a Gaussian model the Mahalanobis distance is -2 log density. Under the nonparanormal,
    z = T(x) with T_j = Phi^-1 o F_j and z ~ N(mu, C) (here the trimmed moments of z), the density
    of x is phi_{mu,C}(T(x)) |T'(x)| with T_j'(x_j) = f_j(x_j) / phi(z_j), so

        -2 log p(x) = (z - mu)' C^-1 (z - mu) - sum_j z_j^2 - 2 sum_j log f_j(x_j) + const.

    The distance in z space alone scores each marginal as if z_j's N(0, 1) density were the
    value's: that discards how far out a value lies (the CDF saturates at Phi^-1(1 - 1/(2n))) and
    whether it falls in a gap of its feature. The likelihood puts the marginal evidence back, for
    the model's own reason, with no weight to choose."""
    Z = _normal_scores_midrank(X)
    n, mu, C = _trimmed_moments(Z, steps)
    return dist(Z, n, mu, C) - (Z * Z).sum(1) - 2.0 * _log_marginal_density(X).sum(1)


METHODS["cop_nll"] = lambda X: copula_nll(X, 1)
METHODS["cop_nll2"] = lambda X: copula_nll(X, 2)


def _kll_scores_and_log_density(X, k=200):
    """Both halves of ``copula_nll`` read from one KLL sketch per feature (k = 200): the mid-rank
    CDF as in ``_normal_scores_kll``, and the quantile-spacing density from the sketch's quantiles
    at u -+ h, h = max(ceil(sqrt(n)) / n, the sketch's rank error) -- a sketch cannot resolve ranks
    closer than its error, so that is its narrowest window; the ends read the exact min and max."""
    import datasketches
    n, d = X.shape
    Z = np.empty((n, d))
    logf = np.empty((n, d))
    for j in range(d):
        sk = datasketches.kll_doubles_sketch(k)
        sk.update(np.ascontiguousarray(X[:, j]))
        distinct, where = np.unique(X[:, j], return_inverse=True)
        where = where.reshape(-1)
        below = np.asarray(sk.get_cdf(distinct, False))[:-1]
        at = np.asarray(sk.get_cdf(distinct, True))[:-1]
        u = _midrank_from_cdf(below, at, n)
        Z[:, j] = stats.norm.ppf(u)[where]
        h = max(np.ceil(np.sqrt(n)) / n, sk.normalized_rank_error(False))
        lo, hi = np.maximum(u - h, 0.0), np.minimum(u + h, 1.0)
        qlo = np.where(lo <= 0.0, sk.get_min_value(), np.asarray(sk.get_quantiles(np.clip(lo, 0, 1))))
        qhi = np.where(hi >= 1.0, sk.get_max_value(), np.asarray(sk.get_quantiles(np.clip(hi, 0, 1))))
        floor = 1e-6 * max(sk.get_max_value() - sk.get_min_value(), 1e-300)
        logf[:, j] = np.log((hi - lo) / np.maximum(qhi - qlo, floor))[where]
    return Z, logf


def copula_nll_kll(X, steps=1):
    Z, logf = _kll_scores_and_log_density(X)
    n, mu, C = _trimmed_moments(Z, steps)
    return dist(Z, n, mu, C) - (Z * Z).sum(1) - 2.0 * logf.sum(1)


METHODS["cop_kll_nll"] = lambda X: copula_nll_kll(X, 1)
METHODS["cop_kll_nll2"] = lambda X: copula_nll_kll(X, 2)



# ------------------------------------------------------------------ feature bagging over the trimmed moments
# Lazarevic & Kumar (2005), "Feature bagging for outlier detection", KDD: score each row in several
# random feature subsets and combine. Reason here: whitening in the full space lets one heavy-tailed
# low-variance direction dominate the distance; a subset that leaves that feature out does not see
# it, so the combination dilutes it. The covariance of a feature subset S is the submatrix C_SS of
# the kept trimmed covariance (and its mean the subvector), so a tree node already holds every
# subset's moments: no new mergeable state. The subsets are drawn from a generator seeded by d only
# (every node, engine and round draws the same ones). Each subset's squared distance is computed
# through the complement T = S^c from the full precision P = C^-1 (Schur complement):
#     d2_S(e) = d2_full(e) - u_T' (P_TT)^-1 u_T,   u = P e,
# because e_T - E[e_T | e_S] = (P_TT)^-1 (P e)_T and its conditional precision is P_TT; so a subset
# costs a |T| x |T| solve (|T| <= d/2) on top of the one full solve, not an |S| x |S| one.

def bag_subsets(d, k=15, seed=0x5EED):
    """``k`` sorted feature subsets of sizes uniform in [ceil(d/2), d-1], from a generator seeded by
    ``d`` only (deterministic: the same subsets everywhere). ``d < 2``: the full space alone."""
    if d < 2:
        return [np.arange(d)]
    r = np.random.default_rng([seed, d])
    lo = (d + 1) // 2
    out = []
    for _ in range(k):
        size = int(r.integers(lo, d)) if lo < d else d - 1
        out.append(np.sort(r.choice(d, size, replace=False)))
    return out


def complement_factors(C, subsets):
    """The one ``d x sum|T|`` matrix that turns ``u = P e`` into every subset's complement term:
    column block i holds ``L_i^-T`` (``P_TT = L_i L_i'``) in the rows of ``T_i``, so
    ``||(u @ B)_block_i||^2 = u_T' (P_TT)^-1 u_T``. Depends on the moments only (once per round)."""
    d = C.shape[0]
    P = np.linalg.inv(C)
    P = 0.5 * (P + P.T)
    blocks, starts = [], []
    col = 0
    for S in subsets:
        T = np.setdiff1d(np.arange(d), S)
        B = np.zeros((d, max(len(T), 1)))
        if len(T):
            L = np.linalg.cholesky(P[np.ix_(T, T)])
            B[T] = np.linalg.inv(L).T
        blocks.append(B)
        starts.append(col)
        col += B.shape[1]
    return P, np.hstack(blocks), np.array(starts)


def subset_distances(E, C, subsets, factors=None):
    """Squared distances of the rows of ``E`` (centred) under ``C`` restricted to each subset:
    ``(m, k)``. Through the complement (see above): ``u = P e``, the full distance ``u'e``, and one
    product with :func:`complement_factors`' matrix for every subset's term at once."""
    P, B, starts = complement_factors(C, subsets) if factors is None else factors
    U = E @ P
    full = np.einsum("ij,ij->i", U, E)
    W = U @ B
    W *= W
    out = full[:, None] - np.add.reduceat(W, starts, axis=1)
    return np.maximum(out, 0.0), full


def subset_distances_direct(E, C, subsets):
    """The same as ``subset_distances`` with a Cholesky of each C_SS (the check, and the cost peer)."""
    out = np.empty((len(E), len(subsets)))
    for i, S in enumerate(subsets):
        L = np.linalg.cholesky(C[np.ix_(S, S)])
        Z = np.linalg.solve(L, E[:, S].T)
        out[:, i] = (Z * Z).sum(0)
    return out


def featbag(X, k=15, steps=1, combine="cauchy", with_full=False, floor=None, q=0.975):
    """Feature-bagged trimmed distance: per subset the chi-square p-value of the trimmed distance on
    that subset (``C_SS``, divided by the consistency factor of the full-space trimming -- trimming at
    chi2_d(q) shrinks every direction of a Gaussian by the same factor, so it holds for every
    subset), combined over the ``k`` subsets (and the full space with ``with_full``) by the Cauchy
    rule (``combine="cauchy"``, score ``-log p``) or as the mean of ``-log p`` (``"meanlog"``).
    ``floor``: the eigenvalue floor on the trimmed correlation before (as ``eigfloor``)."""
    d = X.shape[1]
    n, mu, C = _trimmed_moments(X, steps, q)
    if floor is not None:
        sd = np.sqrt(np.diag(C))
        w, V = np.linalg.eigh(C / np.outer(sd, sd))
        C = (V * np.maximum(w, floor)) @ V.T * np.outer(sd, sd)
    c = q / stats.chi2.cdf(stats.chi2.ppf(q, d), d + 2)
    subsets = bag_subsets(d, k)
    D, full = subset_distances(X - mu, C, subsets)
    sizes = np.array([len(S) for S in subsets])
    L = _chi2_neglogsf(D / c, sizes)                 # -log p per subset, exact far into the tail
    if with_full:
        L = np.column_stack([L, _chi2_neglogsf(full / c, np.array([d]))])
    return cauchy_neglog(L) if combine == "cauchy" else L.mean(1)


def _chi2_neglogsf(x, dof):
    """-log P(chi2_dof > x) per column: ``-log chdtrc`` while the tail is above 1e-300, SciPy's
    ``logsf`` beyond (rare rows), and where that gives up (-inf) the leading term of the tail's
    asymptotic series, -log sf ~ x/2 - (dof/2 - 1) log(x/2) + lgamma(dof/2)."""
    from scipy.special import chdtrc, gammaln
    x = np.asarray(x, dtype=float)
    dof = np.broadcast_to(dof, x.shape)
    sf = chdtrc(dof, x)
    with np.errstate(divide="ignore"):
        out = -np.log(sf)
    bad = sf < 1e-300
    if bad.any():
        with np.errstate(divide="ignore"):
            out[bad] = -stats.chi2.logsf(x[bad], dof[bad])
        worse = ~np.isfinite(out)
        if worse.any():
            xb, kb = x[worse], dof[worse]
            out[worse] = xb / 2 - (kb / 2 - 1) * np.log(xb / 2) + gammaln(kb / 2)
    return out


def cauchy_neglog(L, cap=0.99):
    """-log of the Cauchy combination (equal weights) of the p-values exp(-L), per row, without
    the 1e-300 floor: the tiny p-values' terms cot(pi p) ~ 1 / (pi p) are summed in log space, so
    rows far out keep their order (the combined p-value is ~ 1 / (pi T) there)."""
    from scipy.special import logsumexp
    k = L.shape[1]
    logp = -L
    small = logp < np.log(1e-12)
    p = np.clip(np.exp(np.where(small, 0.0, logp)), 0.0, cap)
    rest = np.where(small, 0.0, 1.0 / np.tan(np.pi * np.maximum(p, 1e-300))).sum(1) / k
    with np.errstate(divide="ignore"):
        lse = logsumexp(np.where(small, -logp - np.log(np.pi), -np.inf), axis=1) - np.log(k)
    big = np.isfinite(lse)
    out = np.empty(len(L))
    # no tiny term: T = rest is moderate, combine exactly
    T = rest[~big]
    pc = np.where(T > 0, np.arctan(1.0 / np.where(T > 0, T, 1.0)) / np.pi, 0.5 - np.arctan(T) / np.pi)
    out[~big] = -np.log(np.maximum(pc, 1e-300))
    # a tiny term: T = exp(lse) + rest >= ~1e11 / k, p ~ arctan(1 / T) / pi ~ 1 / (pi T)
    logT = lse[big] + np.log1p(rest[big] * np.exp(-lse[big]))
    out[big] = logT + np.log(np.pi)
    return out


METHODS["bag15"] = lambda X: featbag(X, 15)
METHODS["bag15_full"] = lambda X: featbag(X, 15, with_full=True)
METHODS["bag15_mlog"] = lambda X: featbag(X, 15, combine="meanlog")
METHODS["bag15_2"] = lambda X: featbag(X, 15, steps=2)
METHODS["bag15_full_2"] = lambda X: featbag(X, 15, steps=2, with_full=True)
METHODS["bag15_mlog_2"] = lambda X: featbag(X, 15, steps=2, combine="meanlog")
METHODS["bag10_full_2"] = lambda X: featbag(X, 10, steps=2, with_full=True)
METHODS["bag20_full_2"] = lambda X: featbag(X, 20, steps=2, with_full=True)
METHODS["bag15_full_floor05_2"] = lambda X: featbag(X, 15, steps=2, with_full=True, floor=0.05)


# ------------------------------------------------------------------ LODA (sparse random projections + histograms)
# Pevny (2016), "Loda: Lightweight on-line detector of anomalies", Machine Learning 102: k sparse random
# projections (about sqrt(d) nonzero N(0, 1) weights each), a 1-D histogram of each projection, the
# score the mean over projections of -log of the histogram's density. Reason here: the trimmed
# distance sees one joint ellipsoid; a histogram of a projection sees gaps and several modes along
# it (the multimodal and discrete structure the ellipsoid absorbs), and a value in an empty or
# sparse bin is rare whatever the covariance says, so the two see different structure.
#
# Mergeable state: per projection, the counts of a FIXED grid of bins -- merging adds counts,
# reverting an agent's old vector decrements the bins it fell in (exact). What fixes the grid:
#   * the projection acts on features standardised by the trimmed moments' mean and sd, and the
#     grid is equal-width over w'z in [-R sd_w, +R sd_w], sd_w = sqrt(w' R_trim w) (R_trim the trimmed
#     correlation), R = 6, the width by Scott's rule h = 3.49 sd_w n^(-1/3); all of this is frozen
#     when the grid is made (streaming: at warm-up; it can be re-frozen every so many rounds at the
#     cost of one rebuilding pass over the members). ``loda`` freezes it from every row (the
#     batch best case), ``loda_warm`` from a seeded 10 % of the rows (what a tree frozen at warm-up
#     would have), ``loda_mm`` puts the grid over each projection's exact [min, max] (the paper's and
#     PyOD's batch version; streaming it would need a rebuild whenever the range grows);
#   * a value outside [-R sd_w, R sd_w] goes to one of two overflow bins (counted, so revert stays
#     exact) and is scored as an empty bin: density 1 / ((n + b) h) with the add-one (Laplace)
#     count that every bin gets, so it is the most anomalous a projection can say.
# The projections are drawn from a generator seeded by d only, so every node, engine and round uses
# the same ones.

def loda_projections(d, k=100, seed=0x10DA):
    """``(d, k)`` matrix: column i has ``max(1, round(sqrt(d)))`` nonzero N(0, 1) weights on features
    chosen at random (Pevny's sparsity), from a generator seeded by ``d`` only."""
    r = np.random.default_rng([seed, d])
    nz = max(1, int(round(np.sqrt(d))))
    W = np.zeros((d, k))
    for i in range(k):
        W[r.choice(d, nz, replace=False), i] = r.normal(size=nz)
    return W


class LodaGrid:
    """The frozen part of LODA's state (projections, standardisation, bin edges) and the counts.

    ``counts[i]`` has ``b + 2`` entries: bin 0 and bin b + 1 are the overflow bins below / above
    the grid; a tree node would keep one such array per projection and add them on merge."""

    def __init__(self, X_fit, k=100, R=6.0, steps=1, edges="robust"):
        n, d = X_fit.shape
        nt, mu, C = _trimmed_moments(X_fit, steps)
        sd = np.sqrt(np.diag(C))
        self.mu, self.sd = mu, sd
        self.W = loda_projections(d, k)
        V = self._project(X_fit)
        if edges == "robust":
            Rc = C / np.outer(sd, sd)
            sdw = np.sqrt(np.maximum(np.einsum("ik,ij,jk->k", self.W, Rc, self.W), 1e-300))
            self.h = 3.49 * sdw * n ** (-1.0 / 3.0)
            self.b = int(np.ceil(2 * R / (3.49 * n ** (-1.0 / 3.0))))
            self.lo = -R * sdw
        else:    # "minmax": equal width over the fitted rows' exact range, Scott's width on its sd
            vmin, vmax = V.min(0), V.max(0)
            sdv = V.std(0)
            b = np.ceil((vmax - vmin) / np.maximum(3.49 * sdv * n ** (-1.0 / 3.0), 1e-300))
            self.b = int(np.clip(np.median(b), 1, 10_000))
            self.h = np.maximum(vmax - vmin, 1e-300) / self.b
            self.lo = vmin
        self.counts = np.zeros((k, self.b + 2))
        # standardisation, projection and grid folded into one affine map to bin coordinates
        inv_sd = 1.0 / np.where(sd > 0, sd, 1.0)
        self._A = (self.W * inv_sd[:, None]) / self.h
        self._a = (-(mu * inv_sd) @ self.W - self.lo) / self.h
        self._offsets = np.arange(k, dtype=np.intp) * (self.b + 2)

    def _project(self, X):
        return ((X - self.mu) / np.where(self.sd > 0, self.sd, 1.0)) @ self.W

    def bins(self, X):
        """Bin index of every row in every projection, ``(m, k)``, overflow bins 0 and b + 1 (one
        affine map, floor, clip: the same function counts and scores, so revert is exact)."""
        V = X @ self._A
        V += self._a
        np.floor(V, out=V)
        np.clip(V, -1, self.b, out=V)
        V += 1
        return V.astype(np.intp)

    def add(self, X, sign=1):
        """Count (``sign=-1``: revert) the rows of ``X``: exact, by bin indices."""
        J = self.bins(X)
        k = J.shape[1]
        np.add.at(self.counts, (np.broadcast_to(np.arange(k), J.shape), J), sign)

    def neglog_density_table(self):
        """``(k, b + 2)``: -log density of each bin (add-one counts), overflow bins as empty ones; one
        table per round, so that scoring is a gather and a mean."""
        n = self.counts[:, 1:-1].sum(1, keepdims=True) + self.counts[:, [0, -1]].sum(1, keepdims=True)
        c = self.counts.copy()
        c[:, [0, -1]] = 0.0
        return -np.log((c + 1.0) / ((n + self.b) * self.h[:, None]))

    def score(self, X, table=None):
        table = self.neglog_density_table() if table is None else table
        J = self.bins(X)
        J += self._offsets
        return table.ravel().take(J).mean(1)


def loda(X, k=100, fit_rows=None, steps=1, edges="robust"):
    """LODA score (mean -log density over ``k`` projections) of every row; the grid frozen from
    ``fit_rows`` (default all), every row counted (as the tree would), every row scored."""
    g = LodaGrid(X if fit_rows is None else X[fit_rows], k, steps=steps, edges=edges)
    g.add(X)
    return g.score(X)


def _warm_rows(n, frac=0.1):
    return np.random.default_rng(0).choice(n, max(int(frac * n), 50), replace=False)


def _robust_chi2_neglogp(X, steps=1, q=0.975):
    """-log of the trimmed distance's chi-square p-value (d dof, consistency factor of the trimming)."""
    d = X.shape[1]
    c = q / stats.chi2.cdf(stats.chi2.ppf(q, d), d + 2)
    return _chi2_neglogsf(robust(X, steps=steps, q=q) / c, np.array([d]))


def _empirical_neglogp(s):
    """-log of the upper in-sample rank p-value ``#{s_j >= s_i} / n`` (the empirical null a mergeable
    sketch of members' scores would answer)."""
    n = len(s)
    return -np.log((n - np.searchsorted(np.sort(s), s, "left")) / n)


def loda_fused(X, how="cauchy", steps=1, k=100, fit_rows=None):
    """LODA and the trimmed distance combined: ``cauchy``: the Cauchy combination of the distance's
    chi-square p-value and LODA's empirical (in-sample rank) p-value, score -log p; ``rsum`` / ``rmax``:
    the sum / max of the two in-sample ranks (rank fusion)."""
    a = robust(X, steps=steps)
    b = loda(X, k, fit_rows, steps=steps)
    if how == "cauchy":
        return cauchy_neglog(np.column_stack([_robust_chi2_neglogp(X, steps), _empirical_neglogp(b)]))
    ra, rb = stats.rankdata(a), stats.rankdata(b)
    return ra + rb if how == "rsum" else np.maximum(ra, rb) + 1e-9 * (ra + rb)


def pyod_loda(X, n_bins=10):
    """PyOD's LODA (batch, histograms over each projection's [min, max]) on z-scored features."""
    from pyod.models.loda import LODA
    return LODA(n_bins=n_bins, n_random_cuts=100, random_state=0).fit(_std(X)).decision_scores_


METHODS["loda"] = lambda X: loda(X)
METHODS["loda_2"] = lambda X: loda(X, steps=2)
METHODS["loda_k50"] = lambda X: loda(X, 50)
METHODS["loda_k200"] = lambda X: loda(X, 200)
METHODS["loda_warm"] = lambda X: loda(X, fit_rows=_warm_rows(len(X)))
METHODS["loda_mm"] = lambda X: loda(X, edges="minmax")
METHODS["pyod_loda"] = pyod_loda
METHODS["pyod_loda_auto"] = lambda X: pyod_loda(X, "auto")
for _s, _suf in ((1, ""), (2, "_2")):
    for _how in ("cauchy", "rsum", "rmax"):
        METHODS[f"loda_{_how}{_suf}"] = (lambda h, s: lambda X: loda_fused(X, h, s))(_how, _s)
METHODS["loda_warm_cauchy_2"] = lambda X: loda_fused(X, "cauchy", 2, fit_rows=_warm_rows(len(X)))
METHODS["loda_warm_rsum_2"] = lambda X: loda_fused(X, "rsum", 2, fit_rows=_warm_rows(len(X)))


# ------------------------------------------------------------------ principal component classifier (PCC)
# Shyu, Chen, Sarinnapakorn & Chang (2003), "A novel anomaly detection scheme based on principal
# component classifier", ICDM Foundations and New Directions of Data Mining workshop: on the
# (robust) correlation matrix, the major-component part sum_{i <= q} y_i^2 / lambda_i over the
# components explaining a fraction (here 50 %) of the variance, and the minor part over the
# components with lambda < 0.2; a row is anomalous if either is large. Reason here: the full
# distance spreads a deviation concentrated in a few minor directions over d degrees of freedom;
# each part's own chi-square test (q and r dof) does not dilute it. Computed from the trimmed
# moments alone (their correlation matrix's eigendecomposition, once per round): no new state.

def pcc(X, steps=1, combine="bonf", major=0.5, minor=0.2, with_full=False, q=0.975):
    """-log of the combined p-value of Shyu et al.'s two parts, each with its chi-square p-value (q
    and r degrees of freedom), the trimmed covariance's consistency factor applied to both (trimming
    a Gaussian at chi2_d(q) shrinks every direction alike): ``bonf`` 2 min(p) (Bonferroni), ``cauchy``
    the Cauchy combination; ``with_full`` adds the full trimmed distance's p-value as a third (Cauchy).
    No component below ``minor``: the major part alone."""
    d = X.shape[1]
    n, mu, C = _trimmed_moments(X, steps, q)
    sd = np.sqrt(np.diag(C))
    w, V = np.linalg.eigh(C / np.outer(sd, sd))
    w, V = w[::-1], V[:, ::-1]                      # descending
    c = q / stats.chi2.cdf(stats.chi2.ppf(q, d), d + 2)
    Y2 = (((X - mu) / sd) @ V) ** 2 / np.maximum(w, 1e-300) / c
    nq = int(np.searchsorted(np.cumsum(w) / w.sum(), major) + 1)
    mi = np.flatnonzero(w < minor)
    parts = [_chi2_neglogsf(Y2[:, :nq].sum(1), np.array([nq]))]
    if len(mi):
        parts.append(_chi2_neglogsf(Y2[:, mi].sum(1), np.array([len(mi)])))
    if with_full:
        parts.append(_chi2_neglogsf(Y2.sum(1), np.array([d])))
    L = np.column_stack(parts)
    if combine == "bonf":
        return L.max(1) - np.log(L.shape[1])        # -log(m min p), m the number of parts
    return cauchy_neglog(L)


for _s, _suf in ((1, ""), (2, "_2")):
    METHODS[f"pcc_bonf{_suf}"] = (lambda s: lambda X: pcc(X, s, "bonf"))(_s)
    METHODS[f"pcc_cauchy{_suf}"] = (lambda s: lambda X: pcc(X, s, "cauchy"))(_s)
    METHODS[f"pcc_full{_suf}"] = (lambda s: lambda X: pcc(X, s, "cauchy", with_full=True))(_s)


# ------------------------------------------------------------------ Half-Space Trees (HS-Trees)
# Tan, Ting & Liu (2011), "Fast anomaly detection for streaming data", IJCAI: T random binary trees
# of full depth D over a fixed work space; each internal node splits the range it covers of one
# feature, chosen at random per node, at its midpoint; each node keeps the *mass* (count) of the
# rows that pass through it; a row's score sums over trees mass(node) * 2^depth at the first node on
# its path whose mass is <= a size limit (or the leaf): a mass-based density estimate (each level
# halves the node's volume), low = anomalous. Reason here: an axis-parallel mass estimate sees the
# sparse regions of any population shape (several modes, heavy tails, discrete levels), where one
# ellipsoid does not, so fused with the trimmed distance (which sees joint anomalies) it may cover
# both. Mergeable state: one count per tree node (merge adds counts, revert decrements the T * (D + 1)
# nodes the old vector passed through: exact integers), the trees drawn from a generator seeded by d
# only, so every node, engine and round builds the same ones.
#
# The work space (the paper's, moved from [0, 1]-normalised data to robust units): per feature the
# trimmed moments' mean mu_j and sd sd_j (the ones ``robust`` keeps; a zero sd counts as 1), the
# core [mu_j - 3 sd_j, mu_j + 3 sd_j] mapped to [0, 1]; per tree and feature s ~ U(0, 1) and the
# range [s - w, s + w], w = 2 max(s, 1 - s), as in the paper (so the root's first cut on a feature
# falls at a random point of its core and every tree's space covers the core with a margin). Rows
# outside it go to the outermost cells. Being per-feature affine, the work space makes z-scoring the
# inputs immaterial. It is frozen when the trees are made (``fit_rows``: default every row, the batch
# best case; ``hst_warm`` from a seeded 10 %, what a tree frozen at warm-up would have).
# ``hst_mm*`` use the paper's own normalisation instead: the core is each feature's [min, max] of the
# fitting rows (review: held out it does better, 0.966 / 0.706 fused against 0.944 / 0.661, from
# ``clusters``, whose features span only 0.4-1.2 x 6 trimmed sd -- the sd is inflated by the spread
# between clusters -- so in robust units more of the cuts fall outside the data).
#
# Depth and size (stated before the runs): the size limit is ceil(sqrt(n)) (the k ~ sqrt(n) rule of
# nearest-neighbour density estimates, Loftsgaarden & Quesenberry 1965, used for the copula's
# marginal density above; the paper's 0.1 * window is ``hst_p10``). A typical row must reach a node
# of mass <= sqrt(n) before the leaf, which takes log2(n / sqrt(n)) = log2(sqrt(n)) <= 7.8 levels at
# n <= 50,000 if every split halved the mass; a midpoint cut of a range wider than the core removes
# less than half, so D = 12 (8,191 counts per tree) with that margin; the paper's D = 15 is for a
# 250-row window and would add 8x the counts for levels rows reach only in a sparse region, where the
# size limit has stopped them already. T = 25 (the paper's; ``hst_t100`` checks that more trees do
# not matter): a node of the tree then keeps 25 * 8,191 counts. The premise did not hold (``hst_check``
# on the held-out worlds): after a feature's first cut the next ones on it fall >= 3 sd out (the
# midpoints of a range much wider than the core), so a level removes far less than half the mass;
# at n = 3,000 most paths (79-92 % at D = 12, 67-88 % at D = 15) reach the leaf with mass above the
# limit, a row's own leaf holding 330-610 rows (200-400), and the size limit rarely acts.

HST_R = 3.0


def hst_forest(X_fit, T=25, D=12, steps=1, seed=0x4A57, space="robust"):
    """``(feat, split)``, each ``(T, 2^D - 1)``: the split feature and value of every internal node
    (heap order: node i's children are 2i + 1 and 2i + 2), built level by level with array ops over
    the nodes of a level; the work space from ``X_fit``'s trimmed moments (``space="robust"``, see
    above) or, as in the paper (data min-max normalised to [0, 1]), from ``X_fit``'s per-feature
    [min, max] (``space="minmax"``); the random draws from a generator seeded by ``d`` only."""
    d = X_fit.shape[1]
    if space == "minmax":      # unit u -> x = lo_j + u (hi_j - lo_j)
        lo0 = X_fit.min(0)
        span = X_fit.max(0) - lo0
        span = np.where(span > 0, span, 1.0)
    else:                      # unit u -> x = mu + sd R (2u - 1)
        _, mu, C = _trimmed_moments(X_fit, steps)
        sd = np.sqrt(np.maximum(np.diag(C), 0.0))
        sd = np.where(sd > 0, sd, 1.0)
        lo0, span = mu - HST_R * sd, 2.0 * HST_R * sd
    r = np.random.default_rng([seed, d])
    n_int = 2 ** D - 1
    feat = np.empty((T, n_int), np.intp)
    split = np.empty((T, n_int))
    for t in range(T):
        s = r.random(d)
        w = 2.0 * np.maximum(s, 1.0 - s)
        lo = lo0 + span * (s - w)
        hi = lo0 + span * (s + w)
        L, H = lo[None, :], hi[None, :]
        for k in range(D):
            m = 2 ** k
            f = r.integers(0, d, m)
            rows = np.arange(m)
            mid = 0.5 * (L[rows, f] + H[rows, f])
            feat[t, m - 1: 2 * m - 1] = f
            split[t, m - 1: 2 * m - 1] = mid
            if k + 1 < D:
                L2 = np.repeat(L, 2, axis=0)
                H2 = np.repeat(H, 2, axis=0)
                H2[2 * rows, f] = mid          # left child: x <= mid
                L2[2 * rows + 1, f] = mid      # right child: x > mid
                L, H = L2, H2
    return feat, split


def hst_paths(X, feat, split):
    """Every row's node at every depth of every tree, ``(m, T, D + 1)`` (heap indices, root 0): all
    rows routed level by level at once (one gather and one comparison per level)."""
    m = len(X)
    T, n_int = feat.shape
    D = int(np.log2(n_int + 1))
    idx = np.zeros((m, T), np.intp)
    out = np.empty((m, T, D + 1), np.int32)
    out[:, :, 0] = 0
    rows = np.arange(m)[:, None]
    tcol = np.arange(T)[None, :]
    for k in range(D):
        f = feat[tcol, idx]
        right = X[rows, f] > split[tcol, idx]
        idx = 2 * idx + 1 + right
        out[:, :, k + 1] = idx
    return out


def hst_counts(paths, T, D):
    """``(T, 2^(D+1) - 1)`` mass counts from the rows' paths (``hst_paths``); a node would add them
    on merge and subtract an agent's old path on revert."""
    n_nodes = 2 ** (D + 1) - 1
    g = paths + (np.arange(T, dtype=np.int64) * n_nodes)[None, :, None]
    return np.bincount(g.ravel(), minlength=T * n_nodes).reshape(T, n_nodes)


def hst_mass_score(paths, counts, limit):
    """The paper's score, sum over trees of mass * 2^depth at the first node on the row's path with
    mass <= ``limit`` (or the leaf), returned negated (high = anomalous)."""
    T, D1 = paths.shape[1:]
    M = counts[np.arange(T)[None, :, None], paths]                  # (m, T, D + 1) masses on the path
    stop = M <= limit
    k = np.where(stop.any(2), stop.argmax(2), D1 - 1)              # (m, T) depth of the scored node
    mass = np.take_along_axis(M, k[:, :, None], axis=2)[:, :, 0]
    return -(mass * np.exp2(k)).sum(1)


def hst(X, T=25, D=12, limit="sqrt", steps=1, fit_rows=None, space="robust"):
    """HS-Trees score of every row (high = anomalous); the work space (``space``, see
    :func:`hst_forest`) from ``fit_rows`` (default all), every row counted (as the tree would), every
    row scored."""
    n = len(X)
    feat, split = hst_forest(X if fit_rows is None else X[fit_rows], T, D, steps, space=space)
    P = hst_paths(X, feat, split)
    counts = hst_counts(P, T, D)
    lim = np.ceil(np.sqrt(n)) if limit == "sqrt" else limit * n
    return hst_mass_score(P, counts, lim)


def hst_fused(X, how="cauchy", steps=1, **kw):
    """HS-Trees and the trimmed distance combined: ``cauchy``: the Cauchy combination of the two
    scores' empirical p-values (in-population upper ranks ``#{s_j >= s_i} / n``, what a mergeable
    sketch of the members' scores would answer), score ``-log p``; ``cauchy_chi2``: the same with the
    distance's chi-square p-value (consistency factor) instead of its rank, as ``loda_cauchy``;
    ``rsum`` / ``rmax``: the sum / max of the two in-population ranks."""
    a = robust(X, steps=steps)
    b = hst(X, steps=steps, **kw)
    if how == "cauchy":
        return cauchy_neglog(np.column_stack([_empirical_neglogp(a), _empirical_neglogp(b)]))
    if how == "cauchy_chi2":    # _robust_chi2_neglogp's p-value, from the distance already at hand
        d = X.shape[1]
        c = 0.975 / stats.chi2.cdf(stats.chi2.ppf(0.975, d), d + 2)
        return cauchy_neglog(np.column_stack([_chi2_neglogsf(a / c, np.array([d])), _empirical_neglogp(b)]))
    ra, rb = stats.rankdata(a), stats.rankdata(b)
    return ra + rb if how == "rsum" else np.maximum(ra, rb) + 1e-9 * (ra + rb)


def hst_check(X, T=25, D=12, rows=(0, 1, -1), space="robust"):
    """Exactness checks of the prototype and where the size limit stops, on one data set: every
    node's count is its children's sum, the root's is n; counting the rows in two parts and adding
    (merge) or subtracting one part (revert) gives the counts of the whole exactly; the vectorised
    routing equals a per-row walk down the trees for ``rows``. Returns the fraction of (row, tree)
    paths that reach the leaf with mass above the size limit ceil(sqrt(n)), and the mean mass of a
    row's own leaf."""
    n = len(X)
    feat, split = hst_forest(X, T, D, space=space)
    P = hst_paths(X, feat, split)
    C = hst_counts(P, T, D)
    parents = np.arange(2 ** D - 1)
    assert (C[:, 0] == n).all() and (C[:, 2 * parents + 1] + C[:, 2 * parents + 2] == C[:, parents]).all()
    half = n // 2
    A, B = hst_counts(P[:half], T, D), hst_counts(P[half:], T, D)
    assert (A + B == C).all() and (C - A == B).all()
    for i in rows:
        for t in range(T):
            node = 0
            for k in range(D):
                assert P[i, t, k] == node
                node = 2 * node + 1 + int(X[i, feat[t, node]] > split[t, node])
            assert P[i, t, D] == node
    M = C[np.arange(T)[None, :, None], P]
    unstopped = ~(M <= np.ceil(np.sqrt(n))).any(2)
    return float(unstopped.mean()), float(M[:, :, -1].mean())


METHODS["hst"] = lambda X: hst(X)
METHODS["hst_p10"] = lambda X: hst(X, limit=0.1)
METHODS["hst_t100"] = lambda X: hst(X, T=100)
METHODS["hst_d15"] = lambda X: hst(X, D=15)
METHODS["hst_warm"] = lambda X: hst(X, fit_rows=_warm_rows(len(X)))
for _s, _suf in ((1, ""), (2, "_2")):
    for _how in ("cauchy", "cauchy_chi2", "rsum", "rmax"):
        METHODS[f"hst_{_how}{_suf}"] = (lambda h, s: lambda X: hst_fused(X, h, s))(_how, _s)
METHODS["hst_d15_cauchy_chi2_2"] = lambda X: hst_fused(X, "cauchy_chi2", 2, D=15)
METHODS["hst_t100_cauchy_chi2_2"] = lambda X: hst_fused(X, "cauchy_chi2", 2, T=100)
METHODS["hst_warm_cauchy_2"] = lambda X: hst_fused(X, "cauchy", 2, fit_rows=_warm_rows(len(X)))
METHODS["hst_mm"] = lambda X: hst(X, space="minmax")
METHODS["hst_mm_cauchy_chi2_2"] = lambda X: hst_fused(X, "cauchy_chi2", 2, space="minmax")
METHODS["hst_mm_warm_cauchy_chi2_2"] = lambda X: hst_fused(X, "cauchy_chi2", 2, space="minmax",
                                                           fit_rows=_warm_rows(len(X)))


def _best_cpu(fn, repeats):
    """Best CPU time of this process over ``repeats`` calls (other processes on a shared machine do
    not inflate it)."""
    best = float("inf")
    for _ in range(repeats):
        c = time.process_time()
        fn()
        best = min(best, time.process_time() - c)
    return best


def bag_cost(n, dims, k=15, repeats=3, seed=0):
    """Cost of feature bagging per round against today's ``robust`` scoring, same run, same rows.

    ``today``: the tree's round scoring in ``scoring="robust"`` (``score_many`` of every agent,
    ``fdr=None``); ``extra``: what bagging adds on the same rows from the same trimmed moments, split
    into the ``k`` subset distances (the complements' factors, ``u = P e``, one product and the
    per-subset sums: :func:`subset_distances`) and the ``k`` chi-square tails plus the Cauchy
    combination; ``direct``: the subset distances from a Cholesky of each ``C_SS`` instead. Ratios
    are ``(today + extra) / today``. CPU times of this process, best of ``repeats``; run with one
    BLAS thread (``OPENBLAS_NUM_THREADS=1``) so that idle BLAS threads' spinning is not counted."""
    from swarmguard import BehavioralDistributedProtocol, HierarchicalStatisticalTree
    rng = np.random.default_rng(seed)
    print("| d | n | today: robust score_many (s) | + subset distances (s) | + tails and combination (s) "
          "| ratio | ratio, distances only | ratio, direct Cholesky per subset |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for d in dims:
        X = rng.standard_t(4, size=(n, d)) @ (rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d))
        today, t_dist, t_tail, t_direct = _bag_cost_row(X, k, repeats, BehavioralDistributedProtocol,
                                                        HierarchicalStatisticalTree)
        print(f"| {d} | {n:,} | {today:.3f} | {t_dist:.3f} | {t_tail:.3f} | {(today + t_dist + t_tail) / today:.1f}x "
              f"| {(today + t_dist) / today:.1f}x | {(today + t_direct + t_tail) / today:.1f}x |", flush=True)


def _bag_cost_row(X, k, repeats, protocol_type, tree_type):
    """One row of :func:`bag_cost`: (today, subset distances, tails and combination, direct) seconds."""
    n, d = X.shape
    ids = np.arange(n, dtype=np.int64)
    tree = tree_type(feature_dimensions=d)
    proto = protocol_type(tree, scoring="robust")
    tree.update_many(ids, X)
    today = _best_cpu(lambda: proto.score_many(ids, fdr=None), repeats)
    _, mu, C = _trimmed_moments(X)
    E = X - mu
    subsets = bag_subsets(d, k)
    sizes = np.array([len(S) for S in subsets])
    c = 0.975 / stats.chi2.cdf(stats.chi2.ppf(0.975, d), d + 2)
    D, _ = subset_distances(E, C, subsets)
    t_dist = _best_cpu(lambda: subset_distances(E, C, subsets, complement_factors(C, subsets)), repeats)
    t_tail = _best_cpu(lambda: cauchy_neglog(_chi2_neglogsf(D / c, sizes)), repeats)
    t_direct = _best_cpu(lambda: subset_distances_direct(E, C, subsets), repeats)
    return today, t_dist, t_tail, t_direct


def loda_cost(n, dims, k=100, repeats=3, seed=0):
    """Cost of the LODA fusion (``loda_cauchy_2``) per round against today's ``robust`` scoring, same
    run, same rows (``cost ... --candidate loda``).

    ``today``: the tree's ``score_many`` of every agent in ``scoring="robust"`` (``fdr=None``); what
    the fusion adds: ``histograms``: the per-round -log density table from the counts, each row's
    ``k`` bin indices (standardise, project, floor) and the gather and mean; ``null and
    combination``: LODA's empirical p-value (the members' scores sorted, each row's rank by
    ``searchsorted``: the exact null, an upper bound on reading a sketch of it), the trimmed
    distance's chi-square ``-log p`` and the two-term Cauchy combination. Ratios are ``(today +
    extra) / today``. CPU seconds of this process, best of ``repeats``
    (``OPENBLAS_NUM_THREADS=1``). Not counted: the second reweighting step's moments (state kept on
    update, not work per round) and the ``k`` histogram counts updated per changed agent."""
    from swarmguard import BehavioralDistributedProtocol, HierarchicalStatisticalTree
    rng = np.random.default_rng(seed)
    print("| d | n | k | bins | today: robust score_many (s) | + histograms (s) | + null and combination (s) | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for d in dims:
        X = rng.standard_t(4, size=(n, d)) @ (rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d))
        ids = np.arange(n, dtype=np.int64)
        tree = HierarchicalStatisticalTree(feature_dimensions=d)
        proto = BehavioralDistributedProtocol(tree, scoring="robust")
        tree.update_many(ids, X)
        today = _best_cpu(lambda: proto.score_many(ids, fdr=None), repeats)  # noqa: B023 (runs in this iteration)
        g = LodaGrid(X, k, steps=2)
        g.add(X)
        t_hist = _best_cpu(lambda: g.score(X), repeats)  # noqa: B023
        s = g.score(X)
        _, mu, C = _trimmed_moments(X, 2)
        c = 0.975 / stats.chi2.cdf(stats.chi2.ppf(0.975, d), d + 2)
        d2 = dist(X, n, mu, C) / c
        t_comb = _best_cpu(lambda: cauchy_neglog(np.column_stack(
            [_chi2_neglogsf(d2, np.array([d])), _empirical_neglogp(s)])), repeats)  # noqa: B023
        print(f"| {d} | {n:,} | {k} | {g.b} | {today:.3f} | {t_hist:.3f} | {t_comb:.3f} "
              f"| {(today + t_hist + t_comb) / today:.1f}x |", flush=True)


def hst_cost(n, dims, T=25, D=15, repeats=3, seed=0):
    """Cost of the HS-Trees fusion (``hst_d15_cauchy_chi2_2``) per round against today's ``robust``
    scoring, same run, same rows (``cost ... --candidate hst``).

    ``today``: the tree's ``score_many`` of every agent in ``scoring="robust"`` (``fdr=None``); what
    the fusion adds: ``route``: each row's node at every depth of every tree (``T (D + 1)`` nodes,
    one gather and comparison per level); ``masses``: the gather of those nodes' counts, the size
    limit's stopping depth and the sum over trees; ``null and combination``: the HS-Trees score's
    empirical p-value (an exact sort and ``searchsorted``, an upper bound on reading a sketch), the
    distance's chi-square ``-log p`` and the Cauchy combination. Ratios ``(today + route + masses +
    null) / today`` and, for a tree that keeps each agent's path from its last update (``T (D + 1)``
    integers per agent, so a round need not route the unchanged ones), ``(today + masses + null) /
    today``. CPU seconds, best of ``repeats`` (``OPENBLAS_NUM_THREADS=1``). Not counted: making the
    trees (once per frozen work space) and the ``T (D + 1)`` count increments per changed agent per
    node on its path."""
    from swarmguard import BehavioralDistributedProtocol, HierarchicalStatisticalTree
    rng = np.random.default_rng(seed)
    print("| d | n | T | D | today: robust score_many (s) | + route (s) | + masses (s) | + null and combination (s) "
          "| ratio | ratio, paths kept |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for d in dims:
        X = rng.standard_t(4, size=(n, d)) @ (rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d))
        ids = np.arange(n, dtype=np.int64)
        tree = HierarchicalStatisticalTree(feature_dimensions=d)
        proto = BehavioralDistributedProtocol(tree, scoring="robust")
        tree.update_many(ids, X)
        today = _best_cpu(lambda: proto.score_many(ids, fdr=None), repeats)  # noqa: B023 (runs in this iteration)
        feat, split = hst_forest(X, T, D, steps=2)
        t_route = _best_cpu(lambda: hst_paths(X, feat, split), repeats)  # noqa: B023
        P = hst_paths(X, feat, split)
        counts = hst_counts(P, T, D)
        lim = np.ceil(np.sqrt(n))
        t_mass = _best_cpu(lambda: hst_mass_score(P, counts, lim), repeats)  # noqa: B023
        s = hst_mass_score(P, counts, lim)
        _, mu, C = _trimmed_moments(X, 2)
        c = 0.975 / stats.chi2.cdf(stats.chi2.ppf(0.975, d), d + 2)
        d2 = dist(X, n, mu, C) / c
        t_comb = _best_cpu(lambda: cauchy_neglog(np.column_stack(
            [_chi2_neglogsf(d2, np.array([d])), _empirical_neglogp(s)])), repeats)  # noqa: B023
        print(f"| {d} | {n:,} | {T} | {D} | {today:.3f} | {t_route:.3f} | {t_mass:.3f} | {t_comb:.3f} "
              f"| {(today + t_route + t_mass + t_comb) / today:.1f}x | {(today + t_mass + t_comb) / today:.1f}x |",
              flush=True)


if __name__ == "__main__":
    main()
