import pandas as pd
import pytest
from kedro.io import DataCatalog
from kedro.io.core import DatasetError

from sae_reasoning.benchmarks.parsing import NATIVE_COLUMNS, normalize_raw
from sae_reasoning.datasets.reasoning_gym import ReasoningGymDataset

TYPE = "sae_reasoning.datasets.reasoning_gym.ReasoningGymDataset"


@pytest.mark.parametrize(
    ("benchmark", "tasks"),
    [
        ("gsm8k", "gsm_symbolic"),
        ("math", {"basic_arithmetic": {"max_terms": 3, "max_digits": 2}, "gcd": {"max_value": 30}}),
        ("logic", {"syllogism": {"invalid_ratio": 0.5}}),
    ],
)
def test_loads_native_columns(benchmark, tasks):
    frame = ReasoningGymDataset(benchmark=benchmark, tasks=tasks, size=8, seed=0).load()
    assert isinstance(frame, pd.DataFrame)
    assert len(frame) == 8
    assert set(NATIVE_COLUMNS[benchmark]) <= set(frame.columns)
    assert len(normalize_raw(frame, benchmark)) == 8


def test_same_seed_same_rows():
    a = ReasoningGymDataset(benchmark="math", tasks=["gcd", "lcm"], size=10, seed=4).load()
    b = ReasoningGymDataset(benchmark="math", tasks=["gcd", "lcm"], size=10, seed=4).load()
    c = ReasoningGymDataset(benchmark="math", tasks=["gcd", "lcm"], size=10, seed=5).load()
    pd.testing.assert_frame_equal(a, b)
    assert a["problem"].tolist() != c["problem"].tolist()


def test_read_only():
    ds = ReasoningGymDataset(benchmark="gsm8k", tasks="gsm_symbolic", size=2)
    with pytest.raises(DatasetError, match="read-only"):
        ds.save(pd.DataFrame({"question": ["q"], "answer": ["#### 1"]}))
    assert ds.exists()


def test_describe_returns_config():
    tasks = {"syllogism": {"invalid_ratio": 0.5, "weight": 2}, "circuit_logic": {}}
    ds = ReasoningGymDataset(benchmark="logic", tasks=tasks, size=30, seed=3)
    assert ds.describe() == {"benchmark": "logic", "tasks": tasks, "size": 30, "seed": 3}
    assert "syllogism" in repr(ds)


def test_bad_arguments_raise_dataset_error():
    with pytest.raises(DatasetError, match="unknown benchmark"):
        ReasoningGymDataset(benchmark="mmlu", tasks="gcd", size=2)
    with pytest.raises(DatasetError, match="at least one reasoning-gym task"):
        ReasoningGymDataset(benchmark="math", tasks={}, size=2)


def test_from_catalog_config():
    catalog = DataCatalog.from_config(
        {
            "logic_raw": {
                "type": TYPE,
                "benchmark": "logic",
                "size": 6,
                "seed": 1,
                "tasks": {"syllogism": {}},
            },
        }
    )
    frame = catalog.load("logic_raw")
    assert list(frame.columns) == ["question", "answer", "choices", "source"]
    assert len(frame) == 6


def test_gsm8k_rows_carry_templates_through_normalisation():
    frame = ReasoningGymDataset(benchmark="gsm8k", tasks="gsm_symbolic", size=30, seed=1).load()
    assert list(frame.columns) == ["question", "answer", "template", "source"]
    rows = normalize_raw(frame, "gsm8k")
    assert rows["template"].tolist() == frame["template"].tolist()
    assert rows["template"].nunique() < len(rows)  # templates repeat
    assert rows["solution"].notna().all()


CORPUS_TASKS = {
    "gsm8k": {"tasks": "gsm_symbolic", "size": 6},
    "math": {
        "tasks": {
            "add": {
                "task": "basic_arithmetic",
                "min_terms": 2,
                "max_terms": 2,
                "min_digits": 1,
                "max_digits": 1,
                "operators": ["+"],
            }
        },
        "size": 40,
    },
    "logic": {"tasks": {"syllogism": {}}, "size": 4},
}


def test_corpus_is_deterministic_in_its_seed_and_mixes_benchmarks():
    from sae_reasoning.datasets.reasoning_gym import ReasoningGymCorpusDataset

    a = ReasoningGymCorpusDataset(benchmarks=CORPUS_TASKS, seed=7).load()
    pd.testing.assert_frame_equal(
        a, ReasoningGymCorpusDataset(benchmarks=CORPUS_TASKS, seed=7).load()
    )
    assert (
        a["question"].tolist()
        != ReasoningGymCorpusDataset(benchmarks=CORPUS_TASKS, seed=8).load()["question"].tolist()
    )
    assert list(a.columns) == ["benchmark", "question", "answer", "source"] and len(a) == 50
    assert a["benchmark"].tolist() != sorted(a["benchmark"])  # shuffled together
    gsm = a[a["benchmark"] == "gsm8k"]["answer"]
    assert gsm.str.contains("\n#### ").all() and (gsm.str.len() > 40).all()  # worked solutions
    assert not a[a["benchmark"] == "math"]["answer"].str.contains("####").any()


def test_corpus_texts_never_repeat_an_evaluation_question():
    """Corpus and benchmark drawn from a small problem space (one-digit sums): collisions occur,
    and the capture's filter drops exactly those rows."""
    from sae_reasoning.activations.corpus import CorpusSource, EvaluationFilter
    from sae_reasoning.datasets.reasoning_gym import ReasoningGymCorpusDataset

    corpus = ReasoningGymCorpusDataset(benchmarks={"math": CORPUS_TASKS["math"]}, seed=1001).load()
    examples = normalize_raw(
        ReasoningGymDataset(
            benchmark="math", tasks=CORPUS_TASKS["math"]["tasks"], size=40, seed=1
        ).load(),
        "math",
    )
    overlap = set(corpus["question"]) & set(examples["question"])
    assert overlap  # the test means something
    source = CorpusSource(corpus, exclude=EvaluationFilter(examples["question"]))
    texts = list(source.texts())
    assert (
        source.exclude.n_dropped
        == corpus["question"].isin(overlap).sum()
        == len(corpus) - len(texts)
    )
    assert not any(f"Question: {q}\n" in t for q in examples["question"] for t in texts)


def test_corpus_bad_arguments_raise_dataset_error():
    from sae_reasoning.datasets.reasoning_gym import ReasoningGymCorpusDataset

    with pytest.raises(DatasetError, match="unknown benchmark 'mmlu'"):
        ReasoningGymCorpusDataset(benchmarks={"mmlu": {"tasks": "gcd", "size": 2}})
    with pytest.raises(DatasetError, match="'math' needs `tasks` and a `size`"):
        ReasoningGymCorpusDataset(benchmarks={"math": {"tasks": "gcd"}})
