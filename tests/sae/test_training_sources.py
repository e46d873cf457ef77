"""SAE training on the corpus and/or the benchmarks (sae_training.sources): the held-out split
applies to benchmark examples only, sources are mixed, and the fingerprint follows them."""

import pytest
import torch

from sae_reasoning.activations.corpus import CORPUS
from sae_reasoning.activations.store import ActivationSet, MassiveActivationFilter
from sae_reasoning.sae import TrainingConfig, train_sae
from sae_reasoning.sae.training_data import train_selection, training_set
from sae_reasoning.sae.training_job import SAETrainingJob, describe_changes
from tests.sae.conftest import HOOK, write_store

TINY = {
    "expansion_factor": 2,
    "batch_size": 100,
    "lr": 3e-3,
    "l1_coefficient": 1.0,
    "progress": False,
    "init_sample_tokens": 200,
    "checkpoint_every": 50,
    "min_steps": 1,
    "training_tokens": 600,
    "exclude_first_position": False,
    "max_norm_ratio": None,
    "eval_every": 5,
}
D = 8


def marked(n: int, source: float, tokens_per_example: int = 10) -> torch.Tensor:
    """Rows whose column 0 is their example index and column 1 names the source."""
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(int(source)))
    x[:, 0] = torch.arange(n) // tokens_per_example
    x[:, 1] = source
    return x


@pytest.fixture
def sets(tmp_path):
    write_store(tmp_path / "bench", marked(1000, 1.0), benchmark="gsm8k", shard_tokens=100)
    write_store(tmp_path / "corpus", marked(1500, 2.0), benchmark=CORPUS, shard_tokens=100)
    return ActivationSet.open(tmp_path / "bench"), ActivationSet.open(tmp_path / "corpus")


def training_rows(data: ActivationSet, config: TrainingConfig) -> torch.Tensor:
    select = train_selection(data, config.sources, config.split.train)
    return torch.cat(
        list(
            data.iter_batches(
                HOOK, 100, seed=0, buffer_tokens=400, exclude=None, select_examples=select
            )
        )
    )


def test_heldout_benchmark_examples_are_never_trained_on_and_every_corpus_row_is(sets):
    bench, corpus = sets
    config = TrainingConfig(**TINY)
    rows = training_rows(training_set(bench, corpus, config.sources, [HOOK]), config)
    from_bench, from_corpus = rows[rows[:, 1] == 1.0], rows[rows[:, 1] == 2.0]
    assert (
        len(from_bench) == 800 and not (from_bench[:, 0] % 5 == 0).any()
    )  # 20 of 100 examples out
    assert len(from_corpus) == 1500  # corpus rows with example_index % 5 == 0 included
    # Shuffling mixes the sources: every batch of the first epoch draws on both.
    batches = rows.split(100)
    assert all({1.0, 2.0} <= set(b[:, 1].tolist()) for b in batches[:-2])


def test_training_reads_only_the_configured_sources(sets):
    bench, corpus = sets
    merged = training_set(bench, corpus, ["corpus", "benchmarks"], [HOOK])
    for sources, expected in (
        (["corpus"], {CORPUS: 1500}),
        (["benchmarks"], {"benchmarks": 800}),
        (["corpus", "benchmarks"], {CORPUS: 1500, "benchmarks": 800}),
    ):
        config = TrainingConfig(**TINY, sources=sources)
        result = train_sae(merged, HOOK, config)
        assert result.summary["n_train_tokens_by_source"] == expected
        assert result.summary["sources"] == sources and result.finished
    assert set(
        training_rows(merged, TrainingConfig(**TINY, sources=["benchmarks"]))[:, 1].tolist()
    ) == {1.0}


def test_fingerprint_follows_sources_and_the_corpus_capture(sets, tmp_path):
    bench, corpus = sets

    def job(sources, corpus_set=corpus):
        config = TrainingConfig(**TINY, sources=sources)
        return SAETrainingJob(training_set(bench, corpus_set, sources, [HOOK]), HOOK, config)

    both = job(["corpus", "benchmarks"])
    assert both.fingerprint == job(["corpus", "benchmarks"]).fingerprint  # unchanged: reused
    assert both.fingerprint != job(["benchmarks"]).fingerprint != job(["corpus"]).fingerprint
    write_store(tmp_path / "corpus2", marked(1400, 2.0), benchmark=CORPUS, shard_tokens=100)
    changed = job(["corpus", "benchmarks"], ActivationSet.open(tmp_path / "corpus2"))
    assert changed.fingerprint != both.fingerprint
    assert describe_changes(both.inputs, changed.inputs) == "activations changed (corpus)"
    assert "config changed: sources ['corpus', 'benchmarks'] -> ['benchmarks']" in describe_changes(
        both.inputs, job(["benchmarks"]).inputs
    )


def test_a_missing_corpus_capture_is_named(sets, tmp_path):
    bench, _ = sets
    with pytest.raises(ValueError, match="includes corpus but .* no corpus activations for"):
        training_set(bench, bench, ["corpus", "benchmarks"], [HOOK])
    with pytest.raises(ValueError, match="sae_training.sources"):
        TrainingConfig(**TINY, sources=["wikipedia"])
    assert training_set(bench, None, ["benchmarks"], [HOOK]).benchmarks == ["gsm8k"]


def test_massive_rows_are_left_out_of_corpus_rows_too(sets):
    bench, corpus = sets
    config = TrainingConfig(**{**TINY, "exclude_first_position": True})
    select = train_selection(
        training_set(bench, corpus, config.sources, [HOOK]), config.sources, config.split.train
    )
    rows = torch.cat(
        list(
            training_set(bench, corpus, config.sources, [HOOK]).iter_batches(
                HOOK, 100, exclude=MassiveActivationFilter(True, None), select_examples=select
            )
        )
    )
    assert (rows[:, 1] == 2.0).sum() == 1500 * 9 // 10
