"""Real-data detection benchmark: swarmguard's scoring modes beside PyOD's detectors.

The 15 classical ADBench datasets (``shared/data/adbench/*.npz``, keys ``X``
and ``y``; see that folder's README.md). Protocol, the same for every method:
unsupervised, every row fitted and every row scored, ROC-AUC and average
precision (``sklearn.metrics``) of the scores against the labels, and the
wall time of fit + score.

* swarmguard: every scoring mode (:data:`swarmguard.SCORING_MODES`) on the
  raw features (its scores are affine-invariant per feature: no scaling
  needed). The score ranked is each row's leave-one-out squared distance
  (``mahalanobis_squared`` of :meth:`BehavioralDistributedProtocol.score_many`,
  the mode's distance); for the modes whose evidence is not a distance
  (``tails``, ``fused``), the mode's p-value as ``-log p`` (:func:`ranked_score`).
* peers (PyOD, default parameters; IsolationForest with ``random_state=0``):
  features z-scored (constant columns dropped), as in PyOD's benchmark.
  LOF, KNN and OCSVM cost O(n²): on a dataset above ``--peer-cap`` rows
  (default 10,000; only shuttle) they are fitted on a random subsample of that
  many rows and score every row (``decision_function``); the table marks those
  cells. Every peer runs in a child process and is given up after
  ``--peer-timeout`` seconds on one dataset (default 120; MCD's FAST-MCD on
  musk, d = 166, takes far longer on this machine): the table shows "-", its
  means are over the datasets it finished (said beside its name) and it ranks
  last where it did not finish.

For the streaming claim every swarmguard mode is also run

* in 10 rounds: the rows in random order, 10 chunks, each added with
  ``update_many``; all rows scored after the last round;
* prequentially: each chunk scored (:meth:`score_vectors`, the rows not in
  the tree) against the chunks before it, then added; the first chunk, which
  has nothing before it, is added and scored leave-one-out against itself.

Run (the whole table, a few minutes)::

    python benchmarks/bench_detection.py

or a subset: ``--datasets cardio,thyroid --methods robust,IForest``. ``--methods robust+cohorts``
adds the opt-in mixture of cohorts (:func:`swarmguard_cohorts`, batch only; not in the default list).
"""

from __future__ import annotations

import argparse
import pathlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from swarmguard import SCORING_MODES, BehavioralDistributedProtocol, HierarchicalStatisticalTree

P_VALUE_MODES = ("tails", "fused")     # modes ranked by their p-value, not by a distance


def ranked_score(res: dict, mode: str) -> np.ndarray:
    """What a mode's rows are ranked by: the distance, or ``-log p`` for :data:`P_VALUE_MODES`
    (p-values at or below 1e-290 -- underflowed, or combined from such -- rank above every other, among
    themselves by distance)."""
    if mode not in P_VALUE_MODES:
        return res["mahalanobis_squared"]
    p = np.asarray(res["p_value"], dtype=np.float64)
    with np.errstate(divide="ignore"):
        score = -np.log(p)
    zero = p <= 1e-290
    score[zero] = 800.0 + np.log1p(np.asarray(res["mahalanobis_squared"])[zero])
    return score

DATA = pathlib.Path(__file__).resolve().parents[1] / "shared" / "data" / "adbench"
FALLBACK_DATA = pathlib.Path("/work/shared/data/adbench")
PEERS = ("IForest", "ECOD", "COPOD", "HBOS", "PCA", "LOF", "KNN", "OCSVM", "MCD")
QUADRATIC_PEERS = ("LOF", "KNN", "OCSVM")
CHUNKS = 10


@dataclass(frozen=True)
class Dataset:
    name: str
    X: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Cell:
    """One method on one dataset."""

    roc_auc: float
    average_precision: float
    seconds: float
    subsampled: bool = False


def load_datasets(folder: pathlib.Path, names: list[str] | None) -> list[Dataset]:
    """Every ``*.npz`` of ``folder`` (name: the file name without its number), sorted by name."""
    out = []
    for path in sorted(folder.glob("*.npz")):
        name = path.stem.split("_", 1)[1].lower()
        if names and name not in names:
            continue
        with np.load(path, allow_pickle=False) as f:
            out.append(Dataset(name, f["X"].astype(np.float64), np.asarray(f["y"]).astype(np.int64)))
    missing = set(names or ()) - {d.name for d in out}
    if missing:
        raise SystemExit(f"unknown datasets {sorted(missing)}; known: "
                         f"{sorted(p.stem.split('_', 1)[1].lower() for p in folder.glob('*.npz'))}")
    return sorted(out, key=lambda d: d.name)


def zscore(X: np.ndarray) -> np.ndarray:
    """Features z-scored; constant columns dropped (PCA would divide by their zero variance)."""
    sd = X.std(axis=0)
    keep = sd > 0
    return (X[:, keep] - X[:, keep].mean(axis=0)) / sd[keep]


# ---------------------------------------------------------------------- swarmguard
def swarmguard_batch(X: np.ndarray, mode: str) -> np.ndarray:
    """Every row added in one batch, every row scored."""
    tree = HierarchicalStatisticalTree(feature_dimensions=X.shape[1])
    protocol = BehavioralDistributedProtocol(tree, scoring=mode)
    ids = np.arange(X.shape[0], dtype=np.int64)
    tree.update_many(ids, X)
    return ranked_score(protocol.score_many(ids, fdr=None), mode)


COHORT_METHODS = ("robust+cohorts",)   # a scoring mode with cohorts found by clustering (score_levels="all")


def swarmguard_cohorts(X: np.ndarray, mode: str = "robust") -> np.ndarray:
    """Every row added in one batch under the cohort of its cluster
    (:func:`swarmguard.structures.cohort_clustering.find_cohorts`, BIC-chosen k, cohorts of at least
    10 d members, the warm-up set to that so that every cohort made is scored), every row scored at both levels (``score_levels="all"``), ranked by the decision
    p-value as ``-log p`` (at or below 1e-290: above every other, by the largest level's distance)."""
    from swarmguard.structures.cohort_clustering import find_cohorts
    d = X.shape[1]
    size = 10 * d       # members per cohort: at least 10 per feature (the shrinkage d/n at most 0.1)
    tree = HierarchicalStatisticalTree(feature_dimensions=d)
    protocol = BehavioralDistributedProtocol(tree, scoring=mode, score_levels="all", warm_up=size)
    fit = find_cohorts(X, min_size=size)
    ids = np.arange(X.shape[0], dtype=np.int64)
    tree.update_many(ids, X, cohorts=np.array([f"cluster-{c}" for c in fit.labels]))
    res = protocol.score_many(ids, fdr=None)
    d2 = np.asarray(res["mahalanobis_squared"], dtype=np.float64).copy()
    for level in res["levels"].values():
        d2[level["rows"]] = np.maximum(d2[level["rows"]], level["mahalanobis_squared"])
    p = np.asarray(res["decision_p_value"], dtype=np.float64)
    with np.errstate(divide="ignore"):
        score = -np.log(p)
    zero = p <= 1e-290
    score[zero] = 800.0 + np.log1p(d2[zero])
    return score


def _chunks(n: int, seed: int) -> list[np.ndarray]:
    return np.array_split(np.random.default_rng(seed).permutation(n), CHUNKS)


def swarmguard_rounds(X: np.ndarray, mode: str, seed: int = 0) -> np.ndarray:
    """The rows added in 10 random chunks (rounds); every row scored after the last."""
    tree = HierarchicalStatisticalTree(feature_dimensions=X.shape[1])
    protocol = BehavioralDistributedProtocol(tree, scoring=mode)
    for rows in _chunks(X.shape[0], seed):
        tree.update_many(rows.astype(np.int64), X[rows])
    ids = np.arange(X.shape[0], dtype=np.int64)
    return ranked_score(protocol.score_many(ids, fdr=None), mode)


def swarmguard_prequential(X: np.ndarray, mode: str, seed: int = 0) -> np.ndarray:
    """Each chunk scored against the chunks before it, then added (the first: against itself)."""
    tree = HierarchicalStatisticalTree(feature_dimensions=X.shape[1])
    protocol = BehavioralDistributedProtocol(tree, scoring=mode)
    scores = np.empty(X.shape[0])
    for k, rows in enumerate(_chunks(X.shape[0], seed)):
        ids = rows.astype(np.int64)
        if k == 0:
            tree.update_many(ids, X[rows])
            scores[rows] = ranked_score(protocol.score_many(ids, fdr=None), mode)
        else:
            scores[rows] = ranked_score(protocol.score_vectors(X[rows]), mode)
            tree.update_many(ids, X[rows])
    return scores


# ---------------------------------------------------------------------- peers
def _peer(name: str):
    from pyod.models.copod import COPOD
    from pyod.models.ecod import ECOD
    from pyod.models.hbos import HBOS
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    from pyod.models.lof import LOF
    from pyod.models.mcd import MCD
    from pyod.models.ocsvm import OCSVM
    from pyod.models.pca import PCA
    return {"IForest": lambda: IForest(random_state=0), "ECOD": ECOD, "COPOD": COPOD, "HBOS": HBOS,
            "PCA": PCA, "LOF": LOF, "KNN": KNN, "OCSVM": OCSVM, "MCD": lambda: MCD(random_state=0)}[name]()


def _peer_scores(X: np.ndarray, name: str, cap: int) -> tuple[np.ndarray, bool]:
    Z = zscore(X)
    model = _peer(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # MCD: singular covariance warnings on mnist / optdigits
        if name in QUADRATIC_PEERS and Z.shape[0] > cap:
            rows = np.random.default_rng(0).choice(Z.shape[0], size=cap, replace=False)
            model.fit(Z[rows])
            return model.decision_function(Z), True
        model.fit(Z)
        return model.decision_scores_, False


def peer_scores(X: np.ndarray, name: str, cap: int, timeout: float) -> tuple[np.ndarray, bool] | None:
    """:func:`_peer_scores` in a child process, given up (None) after ``timeout`` seconds."""
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        job = pool.apply_async(_peer_scores, (X, name, cap))
        try:
            return job.get(timeout)
        except mp.TimeoutError:
            pool.terminate()
            return None


# ---------------------------------------------------------------------- the run
def measure(y: np.ndarray, run: Callable[[], np.ndarray | tuple[np.ndarray, bool] | None]) -> Cell | None:
    from sklearn.metrics import average_precision_score, roc_auc_score
    t0 = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - t0
    if out is None:           # a peer that did not finish in time
        return None
    scores, sub = out if isinstance(out, tuple) else (out, False)
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0, posinf=np.finfo(np.float64).max)
    return Cell(float(roc_auc_score(y, scores)), float(average_precision_score(y, scores)), seconds, sub)


def method_runs(methods: list[str], cap: int, timeout: float) -> dict[str, Callable[[np.ndarray], object]]:
    runs: dict[str, Callable[[np.ndarray], object]] = {}
    for m in methods:
        if m in SCORING_MODES:
            runs[f"swarmguard {m}"] = lambda X, m=m: swarmguard_batch(X, m)
            runs[f"swarmguard {m}, 10 rounds"] = lambda X, m=m: swarmguard_rounds(X, m)
            runs[f"swarmguard {m}, prequential"] = lambda X, m=m: swarmguard_prequential(X, m)
        elif m in COHORT_METHODS:
            runs[f"swarmguard {m}"] = lambda X, m=m: swarmguard_cohorts(X, m.split("+")[0])
        elif m in PEERS:
            runs[m] = lambda X, m=m: peer_scores(X, m, cap, timeout)
        else:
            raise SystemExit(f"unknown method {m!r}; known: {list(SCORING_MODES) + list(COHORT_METHODS) + list(PEERS)}")
    return runs


def ranks(table: dict[str, dict[str, Cell]], names: list[str], datasets: list[str]) -> dict[str, float]:
    """Mean rank by ROC-AUC (1 = best; ties share the mean rank) over the batch methods only
    (the streaming variants are the same method fed differently, not competitors). A method
    that did not finish on a dataset ranks last there."""
    from scipy.stats import rankdata
    total = dict.fromkeys(names, 0.0)
    for ds in datasets:
        r = rankdata([-(table[m][ds].roc_auc if table[m][ds] is not None else -1.0) for m in names])
        for m, v in zip(names, r, strict=True):
            total[m] += v
    return {m: total[m] / len(datasets) for m in names}


def _mean(table, m, datasets, field) -> tuple[float, int]:
    vals = [getattr(table[m][d], field) for d in datasets if table[m][d] is not None]
    return (float(np.mean(vals)) if vals else float("nan")), len(vals)


def print_table(table: dict[str, dict[str, Cell]], datasets: list[str], cap: int) -> None:
    names = list(table)
    batch = [m for m in names if "rounds" not in m and "prequential" not in m]
    mean_rank = ranks(table, batch, datasets)
    wide = max(len(m) for m in names)
    print(f"\nPer dataset ROC-AUC (* = fitted on a {cap:,}-row subsample, every row scored; "
          f"- = did not finish within the time limit)")
    print(" " * wide + "  " + " ".join(f"{d[:9]:>9}" for d in datasets))

    def cell(c: Cell | None) -> str:
        return f"{'-':>8} " if c is None else f"{c.roc_auc:8.3f}{'*' if c.subsampled else ' '}"
    for m in names:
        print(f"{m:<{wide}}  {' '.join(cell(table[m][d]) for d in datasets)}")
    print(f"\nSummary over {len(datasets)} datasets (rank: by ROC-AUC among the {len(batch)} batch methods)")
    print(f"| {'method':<{wide}} | mean ROC-AUC | mean AP | mean rank | seconds |")
    print(f"|{'-' * (wide + 2)}|---:|---:|---:|---:|")
    order = sorted(names, key=lambda m: -_mean(table, m, datasets, "roc_auc")[0])
    for m in order:
        auc, k = _mean(table, m, datasets, "roc_auc")
        ap, _ = _mean(table, m, datasets, "average_precision")
        secs = sum(table[m][d].seconds for d in datasets if table[m][d] is not None)
        rank = f"{mean_rank[m]:.1f}" if m in mean_rank else "—"
        note = "" if k == len(datasets) else f" ({k} of {len(datasets)} datasets)"
        print(f"| {m + note:<{wide}} | {auc:.3f} | {ap:.3f} | {rank} | {secs:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=pathlib.Path, default=DATA if DATA.is_dir() else FALLBACK_DATA)
    ap.add_argument("--datasets", default="", help="comma-separated names (default: all), e.g. cardio,thyroid")
    ap.add_argument("--methods", default="", help="comma-separated swarmguard modes and/or peers (default: all)")
    ap.add_argument("--peer-cap", type=int, default=10_000,
                    help="LOF, KNN, OCSVM: rows fitted at most (a random subsample above), every row scored")
    ap.add_argument("--peer-timeout", type=float, default=120.0,
                    help="seconds a peer may take on one dataset (in a child process); then it is given up")
    a = ap.parse_args()
    names = [s.strip().lower() for s in a.datasets.split(",") if s.strip()] or None
    methods = [s.strip() for s in a.methods.split(",") if s.strip()] or list(SCORING_MODES) + list(PEERS)
    data = load_datasets(a.data, names)
    runs = method_runs(methods, a.peer_cap, a.peer_timeout)
    table: dict[str, dict[str, Cell | None]] = {m: {} for m in runs}
    t0 = time.perf_counter()
    for ds in data:
        for m, run in runs.items():
            table[m][ds.name] = measure(ds.y, lambda run=run, X=ds.X: run(X))
        print(f"{ds.name:>12} (n={ds.X.shape[0]:,}, d={ds.X.shape[1]}): "
              + ", ".join(f"{m} {'-' if table[m][ds.name] is None else f'{table[m][ds.name].roc_auc:.3f}'}"
                          for m in runs), flush=True)
    print_table(table, [d.name for d in data], a.peer_cap)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
