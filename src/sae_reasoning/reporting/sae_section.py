"""Section 2 of the report (activations and SAEs) and the planted-dictionary methods check."""

from __future__ import annotations

from sae_reasoning.reporting.fmt import fmt

SAE_KEYS = ("n_tokens", "mse", "fvu", "explained_variance", "l0", "dead_fraction", "dense_fraction")


def activation_summary(activations) -> dict:
    """hook point -> benchmark -> what the report shows of its store's manifest (an
    ActivationSet in, plain data out: the report never holds the store itself)."""
    out = {}
    for bench, per_hook in activations.stores.items():
        for hook, store in per_hook.items():
            m = store.manifest
            out.setdefault(hook, {})[bench] = {
                "n_tokens": m["n_tokens"],
                "d_model": m["d_model"],
                "dtype": m["dtype"],
                "median_norm": m.get("norm_stats", {}).get("median"),
                "shared_block": m.get("shared_block"),
            }
    return out


def _origin(training: dict) -> str:
    src = training.get("source") or {}  # a pretrained SAE's provenance (sae/pretrained.py)
    if src.get("release"):
        return f"pretrained: {src['release']}/{src['sae_id']}"
    return f"pretrained: {src.get('path')}" if src else "trained"


def _spliced_line(sp: dict) -> str:
    return (
        f"  - spliced into the model (reconstruction in place of the residual, no error "
        f"term) on {sp['n_prompts']} held-out prompts ({sp['n_predicted_tokens']:,} predicted "
        f"tokens): CE loss recovered {fmt(sp['ce_loss_score'])} (CE clean "
        f"{sp['ce_loss_without_sae']:.3f}, with SAE {sp['ce_loss_with_sae']:.3f}, residual "
        f"zero-ablated {sp['ce_loss_with_ablation']:.3f}); KL to the clean model "
        f"{sp['kl_div_with_sae']:.3f} (zero-ablated {sp['kl_div_with_ablation']:.3f})."
    )


def sae_lines(model: str, hook: str, m: dict) -> list[str]:
    keys = [k for k in SAE_KEYS if k in m]
    t = m.get("training") or {}
    L = [
        f"- SAE `{model}` `{hook}` ({_origin(t)}) on held-out tokens: "
        + ", ".join(f"{k} {fmt(m[k])}" for k in keys)
        + "."
    ]
    if t.get("n_train_tokens_by_source"):  # what training read (sae_training.sources)
        by_source = ", ".join(f"{src} {n:,}" for src, n in t["n_train_tokens_by_source"].items())
        L.append(
            f"  - trained on {by_source} tokens ({t.get('steps')} steps, "
            f"{t.get('tokens_seen') or 0:,} tokens seen)."
        )
    if m.get("k") is not None and t.get("inference_l0_train") is not None:
        L.append(
            f"  - BatchTopK-family inference (one shared threshold "
            f"{fmt(t.get('topk_threshold'))}, calibrated on {t.get('calibration_tokens')} "
            f"training tokens so that L0 = k): inference L0 {fmt(t['inference_l0_train'])} "
            f"on those tokens, {fmt(m.get('l0'))} held out; k = {m['k']}."
        )
    elif m.get("k") is not None:
        L.append(f"  - TopK: L0 {fmt(m.get('l0'))} held out; k = {m['k']}.")
    sp = m.get("spliced")
    if isinstance(sp, dict) and "ce_loss_score" in sp:
        L.append(_spliced_line(sp))
    return L


def _massive_activation_line(bench: str, v: dict) -> str | None:
    sb = v.get("shared_block")
    if not (sb and sb.get("first_position_ratio_to_captured_median")):
        return None
    return (
        f"  - {bench}: residual norm at the first position {sb['first_position_norm']:.0f}, "
        f"{sb['first_position_ratio_to_captured_median']:.0f}x the median of captured "
        f"tokens ({v['median_norm']:.1f}): massive activation, excluded from SAE training "
        "by rule."
    )


def _sae_metrics(training: dict) -> dict:
    """hook point -> metrics, from `<model>.sae_metrics` (with or without `hook_points`)."""
    metrics = training["sae_metrics"] or {}
    return metrics.get("hook_points", metrics) or {}


def activations_section(training: dict) -> list[str]:
    L = ["## 2. Activations and SAEs", ""]
    for model, t in training.items():
        for hook, per_bench in t["activations"].items():
            toks = sum(v["n_tokens"] for v in per_bench.values())
            parts = ", ".join(f"{b} {v['n_tokens']:,}" for b, v in per_bench.items())
            L.append(f"- `{model}` `{hook}`: {toks:,} captured tokens ({parts}).")
            # one line per hook point: the first benchmark that shows it
            lines = (_massive_activation_line(b, v) for b, v in per_bench.items())
            L += [line for line in lines if line][:1]
        for hook, m in _sae_metrics(t).items():
            if isinstance(m, dict):
                L += sae_lines(model, hook, m)
    return L + ["", "Training curves: `<model>_sae_training_curve.png`.", ""]


def planted_dictionary(training: dict) -> dict | None:
    """The planted-dictionary check of the first SAE that has one (same settings, same
    result)."""
    for t in training.values():
        for m in _sae_metrics(t).values():
            if isinstance(m, dict) and isinstance(m.get("planted_dictionary"), dict):
                return m["planted_dictionary"]
    return None


def planted_section(training: dict) -> list[str]:
    planted = planted_dictionary(training)
    if not planted:
        return []
    d, sae = planted["data"], planted["sae"]
    verdict = "met" if planted["passed"] else "NOT met"
    return [
        "## Methods: does the trainer find known features?",
        "",
        f"Synthetic activations from a planted sparse dictionary: {d['n_features']} unit "
        f"directions in d_in {d['d_in']}, {d['active_per_token']} active per token with "
        f"coefficients {d['coefficients']}, noise std {d['noise_std']}, {d['n_tokens']:,} "
        f"tokens. The trainer with this run's settings ({sae['architecture']}, d_sae "
        f"{sae['d_sae']}, {sae['steps']} steps) recovered "
        f"**{planted['fraction_recovered']:.1%}** of the planted directions at cosine >= "
        f"{planted['cosine_threshold']} (mean best cosine {planted['mean_best_cosine']:.3f}; "
        f"target {planted['target']}: {verdict}).",
        "",
        "![planted dictionary recovery](planted_dictionary.png)",
        "",
    ]
