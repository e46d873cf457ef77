"""What a failure is reported as: its root cause first, on one line.

Kedro wraps an error raised while a dataset loads or saves twice, each time repeating the
cause's message after its own context (`DatasetError("<name>: Failed while saving data to
dataset <repr>.\\n<cause>") from cause`), so the first line of the outermost error, cut to
fit a table, never reaches the cause. `describe` follows the exception chain instead.
"""

from __future__ import annotations

from itertools import pairwise

MAX_CHARS = 1000  # a whole line of the summary table, still; the cause comes first
CONTEXT_CHARS = 240


def chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what caused it, outermost first: `__cause__`, else `__context__` unless
    suppressed (`raise ... from None`)."""
    links, seen = [exc], {id(exc)}
    while True:
        cur = links[-1]
        nxt = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
        if nxt is None or id(nxt) in seen:
            return links
        links.append(nxt)
        seen.add(id(nxt))


def message(exc: BaseException) -> str:
    try:
        return str(exc).strip()
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the failure
        return ""


def root_cause(exc: BaseException) -> BaseException:
    """The first exception along `chain(exc)` that is not a mere wrapper of the next one.

    A wrapper has an empty message, or a message that ends with its cause's whole
    (non-empty) message: it only puts context in front of it (Kedro's `DatasetError`s).
    An exception whose message says something of its own is the cause, even if it
    quotes the error it came from (`raise ModelLoadError(f"model ... cannot be loaded:
    {exc}. Hint...") from exc`), and even if a lower-level error caused it.
    """
    links = chain(exc)
    for cur, nxt in pairwise(links):
        own, below = message(cur), message(nxt)
        if own and not (below and own.endswith(below)):
            return cur
    return next((e for e in reversed(links) if message(e)), links[-1])


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(exc: BaseException, limit: int = MAX_CHARS) -> str:
    """One line: `<Type>: <message>` of the root cause, then, when that is not `exc`
    itself, what it was raised as: ` (raised as <Type>: <its context>)`.

    E.g. `ModelLoadError: model 'tiny_phi' (/x) cannot be loaded: ... (raised as
    DatasetError: tiny_phi.activations: Failed while saving data to dataset ...)`.
    """
    root = root_cause(exc)
    text = f"{type(root).__name__}: {one_line(message(root))}".rstrip(": ")
    if root is not exc:
        outer, inner = message(exc), message(root)
        context = outer[: len(outer) - len(inner)] if inner and outer.endswith(inner) else outer
        context = one_line(context).rstrip(" :")
        if context:
            text += f" (raised as {type(exc).__name__}: {clip(context, CONTEXT_CHARS)})"
        else:
            text += f" (raised as {type(exc).__name__})"
    return clip(text, limit)
