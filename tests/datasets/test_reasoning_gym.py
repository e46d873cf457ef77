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
    catalog = DataCatalog.from_config({
        "logic_raw": {"type": TYPE, "benchmark": "logic", "size": 6, "seed": 1,
                      "tasks": {"syllogism": {}}},
    })
    frame = catalog.load("logic_raw")
    assert list(frame.columns) == ["question", "answer", "choices", "source"]
    assert len(frame) == 6


def test_gsm8k_rows_carry_templates_through_normalisation():
    frame = ReasoningGymDataset(benchmark="gsm8k", tasks="gsm_symbolic", size=30, seed=1).load()
    assert list(frame.columns) == ["question", "answer", "template", "source"]
    rows = normalize_raw(frame, "gsm8k")
    assert rows["template"].tolist() == frame["template"].tolist()
    assert rows["template"].nunique() < len(rows)          # templates repeat
    assert rows["solution"].notna().all()
