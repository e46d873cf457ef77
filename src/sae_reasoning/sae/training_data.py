"""What SAE training reads (`sae_training.sources`): the corpus and/or the benchmarks.

The trainer takes one ActivationSet whose folders are the benchmarks and, where the corpus
is a source, a `corpus` folder (training_set). The held-out split (eval_every) applies to
benchmark examples only: every corpus row is a training row (train_selection), and
evaluation reads the benchmark set alone, on examples never trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from sae_reasoning.activations.corpus import CORPUS
from sae_reasoning.activations.store import ActivationSet, MassiveActivationFilter

BENCHMARKS = "benchmarks"
SOURCES = (CORPUS, BENCHMARKS)


def check_sources(sources: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(str(s) for s in sources))
    bad = [s for s in chosen if s not in SOURCES]
    if bad or not chosen:
        raise ValueError(
            f"sae_training.sources: {list(sources)!r}; expected a non-empty list of {list(SOURCES)}"
        )
    return chosen


def source_of(folder: str) -> str:
    return CORPUS if folder == CORPUS else BENCHMARKS


def training_set(
    benchmarks: ActivationSet,
    corpus: ActivationSet | None,
    sources: Iterable[str],
    hook_points: list[str],
) -> ActivationSet:
    """The folders training reads: the benchmarks' and/or the corpus's, by `sources`."""
    sources = check_sources(sources)
    stores = {}
    if BENCHMARKS in sources:
        if CORPUS in benchmarks.stores:
            raise ValueError(
                f"{benchmarks.root}: a benchmark folder is named {CORPUS!r}, "
                "the corpus's name; rename the benchmark"
            )
        stores.update(benchmarks.stores)
    if CORPUS in sources:
        found = (corpus.stores.get(CORPUS) or {}) if corpus is not None else {}
        missing = [h for h in hook_points if h not in found]
        if missing:
            where = corpus.root if corpus is not None else "corpus_activations"
            raise ValueError(
                f"sae_training.sources includes corpus but {where} has no corpus "
                f"activations for {missing}; run the capture pipeline "
                "(capture_corpus)"
            )
        stores[CORPUS] = found
    return ActivationSet(benchmarks.root, stores)


def train_selection(
    activations: ActivationSet,
    sources: Iterable[str],
    train: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, Callable | None]:
    """{folder: keep mask of training examples (None: every row)} over the folders of
    `sources`: benchmarks keep their training split, the corpus every row."""
    sources = check_sources(sources)
    chosen = {
        b: (None if b == CORPUS else train)
        for b in activations.benchmarks
        if source_of(b) in sources
    }
    if not chosen:
        raise ValueError(
            f"no activations of sae_training.sources {list(sources)} in "
            f"{activations.root}; "
            f"found {activations.benchmarks}"
        )
    return chosen


def tokens_by_source(
    activations: ActivationSet,
    hook_point: str,
    select: dict[str, Callable | None],
    exclude: MassiveActivationFilter | None,
) -> dict[str, int]:
    """Training rows per source (massive-activation rows and held-out examples left out)."""
    out: dict[str, int] = {}
    for name, fn in select.items():
        store = activations.stores[name][hook_point]
        pos, norm = store.column("position"), store.column("norm")
        keep = (
            exclude.keep_mask(pos, norm, store.median_norm)
            if exclude
            else torch.ones(len(norm), dtype=torch.bool)
        )
        if fn is not None:
            keep &= fn(store.column("example_index"))
        out[source_of(name)] = out.get(source_of(name), 0) + int(keep.sum())
    return out


def count_tokens(
    activations: ActivationSet, hook_point: str, exclude: MassiveActivationFilter | None, select
) -> int:
    """Rows `iter_batches` would yield with this filter and example selection (a mask
    function, or one per folder as ActivationSet.iter_batches takes it)."""
    total = 0
    names, select_of = activations.selection(select)
    for name, store in zip(names, activations.for_hook(hook_point, names)):
        pos, norm = store.column("position"), store.column("norm")
        keep = (
            exclude.keep_mask(pos, norm, store.median_norm)
            if exclude
            else torch.ones(len(norm), dtype=torch.bool)
        )
        if select_of(name) is not None:
            keep &= select_of(name)(store.column("example_index"))
        total += int(keep.sum())
    return total
