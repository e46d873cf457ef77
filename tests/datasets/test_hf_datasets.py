import pandas as pd
import pytest
from kedro.io import DataCatalog
from kedro.io.core import DatasetError

from sae_reasoning.datasets.hf_datasets import HFDatasetsDataset

TYPE = "sae_reasoning.datasets.hf_datasets.HFDatasetsDataset"

MATH = pd.DataFrame(
    {
        "problem": ["What is $1+1$?", "Simplify $\\frac{2}{4}$."],
        "solution": ["$1+1=\\boxed{2}$", "It is $\\boxed{\\frac{1}{2}}$."],
        "level": ["Level 1", "Level 2"],
        "type": ["Prealgebra", "Prealgebra"],
    }
)


def test_local_jsonl_through_the_datasets_library(tmp_path):
    MATH.to_json(tmp_path / "math.jsonl", orient="records", lines=True)
    catalog = DataCatalog.from_config(
        {
            "math_raw": {
                "type": TYPE,
                "path": "json",
                "split": "train",
                "data_files": str(tmp_path / "math.jsonl"),
                "load_args": {"cache_dir": str(tmp_path / "hf_cache")},
            },
        }
    )
    pd.testing.assert_frame_equal(catalog.load("math_raw"), MATH)


def test_local_parquet_with_named_split_and_columns(tmp_path):
    MATH.assign(extra=1).to_parquet(tmp_path / "test.parquet")
    ds = HFDatasetsDataset(
        path="parquet",
        split="test",
        data_files={"test": str(tmp_path / "test.parquet")},
        columns=["problem", "solution", "level", "type"],
        load_args={"cache_dir": str(tmp_path / "hf_cache")},
    )
    pd.testing.assert_frame_equal(ds.load(), MATH)
    assert ds.describe()["path"] == "parquet"


def test_several_splits_need_a_choice(tmp_path):
    MATH.to_json(tmp_path / "a.jsonl", orient="records", lines=True)
    ds = HFDatasetsDataset(
        path="json",
        data_files={"train": str(tmp_path / "a.jsonl"), "test": str(tmp_path / "a.jsonl")},
        load_args={"cache_dir": str(tmp_path / "hf_cache")},
    )
    with pytest.raises(DatasetError, match="2 splits"):
        ds.load()


def test_read_only():
    with pytest.raises(DatasetError, match="read-only"):
        HFDatasetsDataset(path="openai/gsm8k", name="main", split="test").save(MATH)
