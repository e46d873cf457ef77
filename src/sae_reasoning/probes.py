"""Linear probes beside the ablations: is the answer's outcome linearly readable where the SAE sits?

At the answer position (the last prompt token; probes_data.py says where the rows come from:
the capture store, no extra model time) logistic-regression probes predict

  correct    whether the clean model answers correctly (baseline_scores `correct`), on the
             examples of the benchmarks the causal stage analysed (the population its ranking
             speaks about; every benchmark when it analysed none), pooled as its ranking is;
  benchmark  which benchmark the example comes from, on every example,

from two representations: the residual stream at the SAE's hook point (standardised, L2
penalty) and the SAE codes there (standardised, L1 penalty: the sparse probe, whose
weights are compared with the causal ranking in probes_overlap.py).

Fit on the `select` split, measured on `heldout`. The regularisation strength C is chosen
by cross-validated log loss on `select` only (folds keep templates together and classes
balanced: StratifiedGroupKFold). The baseline is the majority class of the select labels.
Accuracy and the gain over the baseline get 95% cluster-bootstrap CIs (causal/stats.py,
templates resampled whole). "Beats the baseline" is a paired test on the same held-out
examples: McNemar's exact test (binomial test on the discordant pairs) when examples are
independent, the cluster sign-flip test of the per-example gains when templates group them;
both two-sided, and the gain must be positive.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sae_reasoning.causal.stats import bootstrap_ci, mcnemar_exact, sign_flip_pvalue
from sae_reasoning.probes_data import AnswerRows, answer_rows, labelled_examples, sae_codes
from sae_reasoning.probes_overlap import compare_with_ranking


@dataclass(frozen=True)
class ProbeConfig:
    top_k: int = 10
    Cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    cv_folds: int = 4
    seed: int = 0
    max_iter: int = 2000
    n_boot: int = 2000
    alpha: float = 0.05

    @classmethod
    def from_params(cls, params: dict) -> ProbeConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(
                f"probes: unknown parameter(s) {unknown}; expected some of {sorted(known)}"
            )
        cfg = cls(
            **{k: (tuple(float(c) for c in v) if k == "Cs" else v) for k, v in params.items()}
        )
        if not cfg.Cs or min(cfg.Cs) <= 0:
            raise ValueError(
                f"probes.Cs {list(cfg.Cs)}: a non-empty list of positive inverse "
                "regularisation strengths"
            )
        for name in ("top_k", "cv_folds", "max_iter", "n_boot"):
            if int(getattr(cfg, name)) < (2 if name == "cv_folds" else 1):
                raise ValueError(f"probes.{name} = {getattr(cfg, name)} is too small")
        if not 0 < cfg.alpha < 1:
            raise ValueError(f"probes.alpha = {cfg.alpha}: expected a level in (0, 1)")
        return cfg


def _estimator(kind: str, C: float, n_classes: int, cfg: ProbeConfig):
    if kind == "residual":
        lr = LogisticRegression(C=C, l1_ratio=0.0, solver="lbfgs", max_iter=cfg.max_iter)
    else:
        # liblinear: fast exact L1 path; a large intercept_scaling keeps the intercept
        # (which liblinear penalises too) practically unpenalised. One-vs-rest for 3+ classes.
        lr = LogisticRegression(
            C=C,
            l1_ratio=1.0,
            solver="liblinear",
            intercept_scaling=100.0,
            max_iter=cfg.max_iter,
            random_state=cfg.seed,
        )
        if n_classes > 2:
            lr = OneVsRestClassifier(lr)
    return make_pipeline(StandardScaler(), lr)


def _proba(model, X: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Class probabilities in the order of `classes` (a fold may miss a class: probability ~0)."""
    p = np.full((len(X), len(classes)), 1e-12)
    seen = model.classes_
    p[:, np.searchsorted(classes, seen)] = model.predict_proba(X)
    return p / p.sum(1, keepdims=True)


def _fit(kind: str, X, y, C: float, n_classes: int, cfg: ProbeConfig):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = _estimator(kind, C, n_classes, cfg).fit(X, y)
    return model, not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def choose_C(kind: str, X, y, groups, cfg: ProbeConfig) -> dict:
    """C with the best mean held-out-fold log loss on the select split (ties: the smaller C)."""
    classes = np.unique(y)
    folds = min(
        cfg.cv_folds, int(np.bincount(np.searchsorted(classes, y)).min()), len(np.unique(groups))
    )
    if folds < 2:
        C = sorted(cfg.Cs)[len(cfg.Cs) // 2]
        return {
            "C": C,
            "folds": 0,
            "note": f"too few select examples per class or cluster for 2 folds; "
            f"C = {C} (middle of the grid)",
        }
    split = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=cfg.seed)
    losses = {}
    for C in sorted(cfg.Cs):
        per_fold = []
        for tr, va in split.split(X, y, groups):
            if len(np.unique(y[tr])) < 2:
                continue
            model, _ = _fit(kind, X[tr], y[tr], C, len(classes), cfg)
            p = _proba(model, X[va], classes)
            per_fold.append(
                float(-np.log(p[np.arange(len(va)), np.searchsorted(classes, y[va])]).mean())
            )
        losses[C] = float(np.mean(per_fold)) if per_fold else float("inf")
    best = min(losses, key=lambda c: (round(losses[c], 9), c))
    return {"C": best, "folds": folds, "cv_log_loss": {str(c): v for c, v in losses.items()}}


def evaluate(
    correct_probe: np.ndarray, correct_majority: np.ndarray, clusters: np.ndarray, cfg: ProbeConfig
) -> dict:
    """Held-out accuracy of probe and majority baseline, the gain, and the paired test."""
    boot = {"n_boot": cfg.n_boot, "seed": cfg.seed}
    cl = None if len(np.unique(clusters)) == len(clusters) else clusters
    probe, major = correct_probe.astype(float), correct_majority.astype(float)
    gain = probe - major
    p_mcnemar, lost, won = mcnemar_exact(correct_majority, correct_probe)
    p_cluster = sign_flip_pvalue(gain, clusters=cl, seed=cfg.seed) if cl is not None else None
    p = p_mcnemar if cl is None else p_cluster
    return {
        "n_heldout": int(len(probe)),
        "n_heldout_clusters": int(len(np.unique(clusters))),
        "accuracy": float(probe.mean()),
        "accuracy_ci": list(bootstrap_ci(probe, clusters=cl, **boot)),
        "majority_accuracy": float(major.mean()),
        "majority_accuracy_ci": list(bootstrap_ci(major, clusters=cl, **boot)),
        "gain": float(gain.mean()),
        "gain_ci": list(bootstrap_ci(gain, clusters=cl, **boot)),
        "majority_right_probe_wrong": lost,
        "probe_right_majority_wrong": won,
        "p_mcnemar": p_mcnemar,
        "p_cluster_sign_flip": p_cluster,
        "test": (
            "exact McNemar (two-sided binomial test on the discordant pairs)"
            if cl is None
            else "cluster sign-flip test of the per-example gain (two-sided; templates flipped "
            "whole)"
        ),
        "p": p,
        "beats_majority": bool(gain.mean() > 0 and p < cfg.alpha),
    }


def probe(
    kind: str,
    X: np.ndarray,
    y: np.ndarray,
    split: np.ndarray,
    clusters: np.ndarray,
    cfg: ProbeConfig,
    feature_ids: np.ndarray | None = None,
) -> dict:
    """One probe: C by CV on select, fit on select, measured on heldout; {"skipped": why} if it
    cannot be."""
    sel, held = split == "select", split == "heldout"
    classes = np.unique(y[sel])
    if len(classes) < 2:
        return {
            "skipped": f"one class only in the select split ({classes.tolist()}): nothing to learn"
        }
    if not held.any():
        return {"skipped": "no heldout examples to measure on"}
    cv = choose_C(kind, X[sel], y[sel], clusters[sel], cfg)
    model, converged = _fit(kind, X[sel], y[sel], cv["C"], len(classes), cfg)
    values, counts = np.unique(y[sel], return_counts=True)
    majority = values[np.argmax(counts)]
    out = {
        "n_select": int(sel.sum()),
        "n_features": int(X.shape[1]),
        "classes": [str(c) for c in classes],
        "majority_class": str(majority),
        "cv": cv,
        "converged": converged,
        **evaluate(model.predict(X[held]) == y[held], y[held] == majority, clusters[held], cfg),
    }
    if kind == "sae_codes":
        out.update(
            _sparse_weights(
                model, feature_ids if feature_ids is not None else np.arange(X.shape[1])
            )
        )
    return out


def _sparse_weights(model, feature_ids: np.ndarray) -> dict:
    """Nonzero weights by |weight| (ties: feature id). Binary: the signed coefficient (in units
    of the feature's select-split std; > 0 favours the second class); 3+ classes: max |coef|."""
    est = model[-1]
    coef = (
        np.stack([e.coef_[0] for e in est.estimators_])
        if isinstance(est, OneVsRestClassifier)
        else est.coef_
    )
    w = coef[0] if len(coef) == 1 else np.abs(coef).max(0)
    nz = np.flatnonzero(w)
    order = nz[np.lexsort((feature_ids[nz], -np.abs(w[nz])))]
    return {
        "n_nonzero": int(len(nz)),
        "weights": [[int(feature_ids[i]), float(w[i])] for i in order],
    }


def target_sets(
    rows: AnswerRows, analysed: list[str] | None
) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """target -> (example mask, labels, which examples)."""
    on = np.isin(rows.benchmark, analysed) if analysed else np.ones(len(rows.rows), bool)
    which = (
        f"benchmarks the causal stage analysed ({', '.join(analysed)})"
        if analysed
        else "every benchmark (the causal stage analysed none at this hook point)"
    )
    return {
        "correct": (on, rows.correct.astype(int), which),
        "benchmark": (np.ones(len(rows.rows), bool), rows.benchmark, "every benchmark"),
    }


def probe_hook(
    rows: AnswerRows, sae, ranking: list[dict] | None, analysed: list[str] | None, cfg: ProbeConfig
) -> dict:
    """Every target x representation at one hook point, and the sparse probe vs the causal
    ranking."""
    codes = sae_codes(sae, rows.resid)
    out = {
        "n_examples": int(len(rows.rows)),
        "d_model": int(rows.resid.shape[1]),
        "d_sae": int(codes.shape[1]),
        "n_over_norm_rule": rows.n_over_norm_rule,
        "targets": {},
    }
    for target, (mask, y, which) in target_sets(rows, analysed).items():
        r = rows.take(mask)
        c, y = codes[mask], y[mask]
        # The L1 probe can only weight features that fire on some select example.
        live = np.flatnonzero((c[r.split == "select"] > 0).any(0))
        out["targets"][target] = {
            "examples": which,
            "n_examples": int(mask.sum()),
            "residual": probe("residual", r.resid, y, r.split, r.cluster, cfg),
            "sae_codes": {
                **probe("sae_codes", c[:, live], y, r.split, r.cluster, cfg, feature_ids=live),
                "n_live_features": int(len(live)),
            },
        }
        if target == "correct":
            sparse = out["targets"][target]["sae_codes"]
            held = r.split == "heldout"
            out["overlap"] = (
                compare_with_ranking(sparse, ranking, live, cfg.top_k, c[held], y[held], cfg.alpha)
                if ranking and "weights" in sparse
                else {
                    "skipped": "no causal ranking at this hook point"
                    if not ranking
                    else f"no sparse probe ({sparse.get('skipped')})"
                }
            )
    return out


def run_probes(
    model: str,
    saes: dict,
    prompts,
    activations,
    baseline,
    ranking: dict,
    summary: dict,
    params: dict,
) -> dict:
    """{model, config, hook_points: {hook: probe_hook(...)}}; input errors raise before any
    fitting."""
    cfg = ProbeConfig.from_params(params)
    examples = labelled_examples(model, prompts, baseline)
    per_hook = {}
    rows = {hook: answer_rows(model, activations, hook, examples) for hook in saes}
    for hook, sae in saes.items():
        analysed = ((summary or {}).get("hook_points", {}).get(hook) or {}).get("benchmarks")
        per_hook[hook] = probe_hook(
            rows[hook], sae, (ranking or {}).get("hook_points", {}).get(hook), analysed, cfg
        )
    return {
        "model": model,
        "config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
        "position": "last prompt token (predicts the first answer token), rows read from the "
        "capture store",
        "split": "C by cross-validation on select; accuracy on heldout",
        "hook_points": per_hook,
    }
