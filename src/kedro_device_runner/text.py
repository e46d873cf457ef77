"""Small conversions the runners share: file-safe names, first lines of messages, and
booleans given as text (`--runner-params` values are strings)."""

from __future__ import annotations

from typing import Any


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.:" else "_" for c in name).replace(":", ".")


def first_line(text: str, limit: int = 300) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
