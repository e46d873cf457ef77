import pandas as pd
import pytest

from sae_reasoning.baseline import BaselineJob
from sae_reasoning.datasets.scores import ScoresDataset
from sae_reasoning.models import ModelHandle, ModelSpec
from tests.prompts_fixture import tiny_prompts
from tests.store_helpers import score_and_save


@pytest.fixture
def spec(tiny_model_dirs):
    return ModelSpec("tiny_llama", str(tiny_model_dirs["llama"]), converted_cache=None)


def test_scores_are_reused_until_the_job_changes(tmp_path, spec, caplog):
    ds = ScoresDataset(filepath=str(tmp_path / "m" / "baseline_scores.parquet"))
    prompts = tiny_prompts()
    score_and_save(ds, BaselineJob(ModelHandle(spec), prompts, generate_tokens=3))
    first = ds.load()
    assert len(first) == len(prompts) and {"gold_logprob", "correct", "generated", "model"} <= set(
        first.columns
    )
    stamp = (tmp_path / "m" / "baseline_scores.parquet").stat().st_mtime_ns

    fresh = ModelHandle(spec)
    with caplog.at_level("INFO"):
        score_and_save(ds, BaselineJob(fresh, prompts, generate_tokens=3))
    assert "reusing" in caplog.text and fresh._loaded is None  # nothing was scored again
    assert (tmp_path / "m" / "baseline_scores.parquet").stat().st_mtime_ns == stamp

    changed = prompts.copy()
    changed.loc[0, "target"] = " 99"
    score_and_save(ds, BaselineJob(ModelHandle(spec), changed, generate_tokens=3))
    assert ds.load().loc[0, "gold_logprob"] != first.loc[0, "gold_logprob"]


def test_a_failing_job_keeps_the_last_table(tmp_path, spec):
    ds = ScoresDataset(filepath=str(tmp_path / "scores.parquet"))
    ds.save(pd.DataFrame({"a": [1, 2]}))
    broken = ModelHandle(
        ModelSpec("missing", str(tmp_path / "no_such_model"), converted_cache=None)
    )
    with pytest.raises(Exception, match="missing"):
        score_and_save(ds, BaselineJob(broken, tiny_prompts()))
    assert ds.load()["a"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["scores.parquet"]
