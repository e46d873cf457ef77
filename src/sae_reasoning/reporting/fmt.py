"""Number and table-cell formatting shared by the report's sections."""

from __future__ import annotations

import pandas as pd


def fmt(x, pct=False, digits=3):
    if x is None or (isinstance(x, float) and pd.isna(x)):
        return "n/a"
    return f"{x:.1%}" if pct else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def ci(r: dict, key: str, pct=False) -> str:
    """'-0.123 [-0.2, -0.05]' from an effect dict with key, key_lo, key_hi (or key_ci)."""
    lo, hi = r.get(f"{key}_ci") or (r.get(f"{key}_lo"), r.get(f"{key}_hi"))
    v = r.get(key)
    if v is None:
        return "n/a"
    if pct:
        return f"{v:+.1%} [{lo:+.1%}, {hi:+.1%}]" if lo is not None else f"{v:+.1%}"
    return f"{v:+.3f} [{lo:+.3f}, {hi:+.3f}]" if lo is not None else f"{v:+.3f}"


def p(x) -> str:
    return "n/a" if x is None or pd.isna(x) else f"{x:.2g}"


def md(text: str) -> str:
    """One table cell: line breaks shown, pipes escaped."""
    return text.replace("\n", "↵").replace("|", "\\|")


def yes(flag) -> str:
    return "n/a" if flag is None else ("**yes**" if flag else "no")
