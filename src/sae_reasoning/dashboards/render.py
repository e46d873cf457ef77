"""Dashboard data (data.py) -> HTML pages: index.html and feature_<id>.html per model and hook
point.

Every page is self-contained: CSS and the index's sort/filter script are inlined, plots are
inline SVG laid out here; a Content-Security-Policy meta tag forbids any network request.
"""

from __future__ import annotations

import math

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

HIST_W, HIST_H, LEFT, BOTTOM = 420, 160, 8, 18


def _num(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _yesno(x) -> str:
    return "—" if x is None else ("yes" if x else "no")


def _tok(text: str) -> str:
    """Whitespace made visible, as SAE-Vis shows it."""
    return (
        text.replace("\n", "↵").replace("\t", "⇥")
        if text.strip()
        else text.replace("\n", "↵") or "∅"
    )


def _shade(act, top) -> str:
    if act is None or not top or act <= 0:
        return ""
    return f"background: rgba(232, 130, 42, {min(1.0, act / top):.3f})"


def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("sae_reasoning.dashboards", "templates"),
        autoescape=select_autoescape(["j2", "html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=_num, pct=_pct, yesno=_yesno, tok=_tok, shade=_shade)
    return env


def histogram_svg(hist: dict) -> dict:
    """Bars of the nonzero-activation histogram, in SVG coordinates."""
    counts, edges = hist["counts"], hist["edges"]
    if not counts:
        return {"bars": []}
    top, base = max(counts), HIST_H - BOTTOM
    w = (HIST_W - LEFT - 5) / len(counts)
    bars = [
        {
            "x": round(LEFT + i * w, 2),
            "w": round(max(w - 1, 1), 2),
            "h": round((base - 14) * c / top, 2),
            "label": f"{edges[i]:.3g} – {edges[i + 1]:.3g}: {c} tokens",
        }
        for i, c in enumerate(counts)
    ]
    for b in bars:
        b["y"] = round(base - b["h"], 2)
    ticks = [
        {"x": round(LEFT + i * w, 2), "label": f"{edges[i]:.3g}", "anchor": anchor}
        for i, anchor in ((0, "start"), (len(counts) // 2, "middle"), (len(counts), "end"))
    ]
    return {
        "bars": bars,
        "ticks": ticks,
        "width": HIST_W,
        "height": HIST_H,
        "base": base,
        "left": LEFT,
        "max_count": top,
    }


def forest_svg(effects: list[dict]) -> dict:
    """Zero-mode Δ gold log-prob per benchmark with CIs (pooled last), as points and whiskers."""
    rows = [e for e in effects if e["mode"] == "zero" and e["delta_logprob"] is not None]
    rows.sort(key=lambda e: (e["benchmark"] == "all", e["benchmark"]))
    if not rows:
        return {"rows": []}
    vals = [
        v
        for e in rows
        for v in (e["delta_logprob"], e["delta_logprob_lo"], e["delta_logprob_hi"], 0.0)
        if v is not None
    ]
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    x0, width = 70, 300

    def x(v):
        return round(x0 + (width - 10) * ((v if v is not None else 0.0) - lo) / span, 2)

    out = [
        {
            "y": 14 + 20 * i,
            "label": e["benchmark"],
            "x": x(e["delta_logprob"]),
            "lo": x(e["delta_logprob_lo"]),
            "hi": x(e["delta_logprob_hi"]),
            "important": bool(e.get("important")),
            "title": f"{e['benchmark']}: {_num(e['delta_logprob'])} "
            f"[{_num(e['delta_logprob_lo'])}, {_num(e['delta_logprob_hi'])}]",
        }
        for i, e in enumerate(rows)
    ]
    return {"rows": out, "zero": x(0.0), "width": x0 + width, "height": 20 * len(out) + 22}


def render_site(data: dict) -> dict[str, str]:
    """file name -> HTML for one model and hook point (dashboard_data's output)."""
    env = environment()
    scanned = sum(data["scanned_tokens"].values())
    common = {"d": data, "scanned": f"{scanned:,}"}
    n_cand = sum("candidate" in r["roles"] for r in data["index"])
    pages = {"index.html": env.get_template("index.html.j2").render(**common, n_candidates=n_cand)}
    page = env.get_template("feature.html.j2")
    for fid, f in data["features"].items():
        top = max((c["activation"] for c in f["top_contexts"]), default=0.0)
        pages[f"feature_{fid}.html"] = page.render(
            **common,
            f=f,
            top=top,
            hist=histogram_svg(f["histogram"]),
            forest=forest_svg(f["effects"]),
        )
    return pages
