"""The data_loading pipeline, run by Kedro on real catalogs: the project's default
configuration, and each way of swapping a raw benchmark (JSONL, parquet, HF datasets)."""

import copy
from pathlib import Path

import pandas as pd
import pytest
import yaml
from kedro.io import DataCatalog
from kedro.runner import SequentialRunner

from sae_reasoning.benchmarks.prompts import EXAMPLE_COLUMNS, PROMPT_COLUMNS
from sae_reasoning.benchmarks.sources import generate_native
from sae_reasoning.pipelines.data_loading import create_pipeline
from sae_reasoning.pipelines.data_loading.nodes import normalizer

CONF = Path(__file__).resolve().parents[3] / "conf" / "base"
OUTPUTS = {
    "examples": "examples.parquet",
    "few_shot_examples": "shots.parquet",
    "prompts": "prompts.parquet",
}


def _conf():
    catalog = yaml.safe_load((CONF / "catalog_data_loading.yml").read_text())
    params = yaml.safe_load((CONF / "parameters_data_loading.yml").read_text())["data_loading"]
    return catalog, params


def _small_params(n_examples=6, n_shots=2, shot_pool=4):
    _, params = _conf()
    params = copy.deepcopy(params)
    for bench in params["benchmarks"].values():
        bench.update(n_examples=n_examples, n_shots=n_shots, shot_pool=shot_pool)
    return params


def _run(raw_config: dict, params: dict, tmp_path: Path):
    config = {
        name: {"type": "pandas.ParquetDataset", "filepath": str(tmp_path / "out" / f)}
        for name, f in OUTPUTS.items()
    }
    config.update(raw_config)
    catalog = DataCatalog.from_config(config)
    catalog["params:data_loading"] = params
    SequentialRunner().run(create_pipeline(), catalog)
    return {name: catalog.load(name) for name in OUTPUTS}


def _check_outputs(out, counts):
    examples, prompts, shots = out["examples"], out["prompts"], out["few_shot_examples"]
    assert list(examples.columns) == EXAMPLE_COLUMNS
    assert list(prompts.columns) == PROMPT_COLUMNS
    assert examples.groupby("benchmark").size().to_dict() == counts
    assert prompts["id"].tolist() == examples["id"].tolist()
    assert not set(shots["id"]) & set(examples["id"])
    assert set(examples["split"]) == {"select", "heldout"}
    assert prompts["target"].str.startswith(" ").all()
    assert prompts["generation_prompt"].str.endswith("Answer:").all()
    answer_only = prompts["prompt_format"] == "answer_only"
    assert (
        prompts.loc[answer_only, "prompt"] == prompts.loc[answer_only, "generation_prompt"]
    ).all()
    assert all(p.startswith(g) for p, g in zip(prompts["prompt"], prompts["generation_prompt"]))
    for row in prompts.itertuples():
        if row.answer_type == "choice":
            assert row.target in list(row.choice_targets)
            assert row.chance == pytest.approx(1 / len(row.choices))
        else:
            assert len(row.choice_targets) == 0 and row.chance == 0.0


def test_pipeline_shape():
    pipe = create_pipeline()
    assert pipe.inputs() == {"gsm8k_raw", "math_raw", "logic_raw", "params:data_loading"}
    assert {"examples", "few_shot_examples", "prompts"} <= pipe.all_outputs()
    assert pipe.outputs() == {"prompts"}


def test_each_benchmark_has_its_normalizer_and_an_unknown_one_is_named():
    assert {b: normalizer(b).__name__ for b in ("gsm8k", "math", "logic")} == {
        "gsm8k": "normalize_gsm8k",
        "math": "normalize_math",
        "logic": "normalize_logic",
    }
    with pytest.raises(ValueError, match=r"no normalizer for benchmark 'arc'; known: gsm8k"):
        normalizer("arc")


def test_default_configuration_end_to_end(tmp_path):
    """The project's own catalog and parameters: the default counts come out."""
    catalog, params = _conf()
    raw = {name: catalog[name] for name in ("gsm8k_raw", "math_raw", "logic_raw")}
    out = _run(raw, params, tmp_path)
    counts = {b: params["benchmarks"][b]["n_examples"] for b in ("gsm8k", "math", "logic")}
    _check_outputs(out, counts)
    split = out["examples"].groupby(["benchmark", "split"]).size()
    for bench, n in counts.items():
        assert split[(bench, "select")] == round(params["select_fraction"] * n)
    # logic labels are balanced, so chance (0.5) is what a constant guess gets
    logic = out["examples"][out["examples"]["benchmark"] == "logic"]
    assert (logic["answer"] == "Yes").mean() == 0.5
    assert (tmp_path / "out" / "prompts.parquet").exists()
    # templates: every gsm8k row has one (gsm_symbolic), the others none; answer-only prompts
    prompts = out["prompts"]
    gsm = prompts["benchmark"] == "gsm8k"
    assert prompts.loc[gsm, "template"].str.startswith("gsm_symbolic:").all()
    assert prompts.loc[gsm, "template"].nunique() < gsm.sum()
    assert prompts.loc[~gsm, "template"].isna().all()
    assert (prompts["prompt_format"] == "answer_only").all()


def test_worked_solutions_for_gsm8k_through_the_pipeline(tmp_path):
    catalog, _ = _conf()
    raw = {name: catalog[name] for name in ("gsm8k_raw", "math_raw", "logic_raw")}
    params = _small_params()
    params["benchmarks"]["gsm8k"]["worked_solutions"] = True
    out = _run(raw, params, tmp_path)
    _check_outputs(out, {"gsm8k": 6, "math": 6, "logic": 6})
    prompts, examples = out["prompts"], out["examples"].set_index("id")
    formats = prompts.groupby("benchmark")["prompt_format"].unique().map(list).to_dict()
    assert formats == {
        "gsm8k": ["worked_solution"],
        "math": ["answer_only"],
        "logic": ["answer_only"],
    }
    for row in prompts[prompts["benchmark"] == "gsm8k"].itertuples():
        gold = examples.loc[row.id, "solution"]
        assert (
            row.prompt == f"{row.generation_prompt} {gold}\n####" and row.target == f" {row.answer}"
        )
        assert row.generation_prompt.count("\n#### ") == 2  # the two shots' answers


def test_worked_solutions_on_a_benchmark_without_them_fail_the_run(tmp_path):
    catalog, _ = _conf()
    raw = {name: catalog[name] for name in ("gsm8k_raw", "math_raw", "logic_raw")}
    params = _small_params()
    params["benchmarks"]["math"]["worked_solutions"] = True
    with pytest.raises(ValueError, match=r"benchmarks\.math\.worked_solutions is true"):
        _run(raw, params, tmp_path)


def test_same_configuration_same_tables(tmp_path):
    catalog, _ = _conf()
    raw = {name: catalog[name] for name in ("gsm8k_raw", "math_raw", "logic_raw")}
    a = _run(raw, _small_params(), tmp_path / "a")
    b = _run(raw, _small_params(), tmp_path / "b")
    for name in OUTPUTS:
        pd.testing.assert_frame_equal(a[name], b[name])


@pytest.fixture(scope="module")
def native_frames():
    """Small raw tables in native columns, as a user's own files would hold them."""
    return {
        "gsm8k": generate_native("gsm8k", "gsm_symbolic", 12, seed=0),
        "math": generate_native("math", {"gcd": {}, "coin_flip": {}}, 12, seed=0),
        "logic": generate_native("logic", {"syllogism": {"balance_answers": True}}, 12, seed=0),
    }


def test_swap_to_local_jsonl(tmp_path, native_frames):
    raw = {}
    for bench, frame in native_frames.items():
        path = tmp_path / f"{bench}.jsonl"
        frame.to_json(path, orient="records", lines=True)
        raw[f"{bench}_raw"] = {
            "type": "pandas.JSONDataset",
            "filepath": str(path),
            "load_args": {"lines": True},
        }
    _check_outputs(_run(raw, _small_params(), tmp_path), {"gsm8k": 6, "math": 6, "logic": 6})


def test_swap_to_local_parquet(tmp_path, native_frames):
    raw = {}
    for bench, frame in native_frames.items():
        path = tmp_path / f"{bench}.parquet"
        frame.to_parquet(path)
        raw[f"{bench}_raw"] = {"type": "pandas.ParquetDataset", "filepath": str(path)}
    _check_outputs(_run(raw, _small_params(), tmp_path), {"gsm8k": 6, "math": 6, "logic": 6})


def test_swap_to_hf_datasets_on_local_files(tmp_path, native_frames):
    raw = {}
    for bench, frame in native_frames.items():
        path = tmp_path / f"{bench}.jsonl"
        frame.to_json(path, orient="records", lines=True)
        raw[f"{bench}_raw"] = {
            "type": "sae_reasoning.datasets.hf_datasets.HFDatasetsDataset",
            "path": "json",
            "data_files": str(path),
            "split": "train",
            "load_args": {"cache_dir": str(tmp_path / "hf_cache")},
        }
    _check_outputs(_run(raw, _small_params(), tmp_path), {"gsm8k": 6, "math": 6, "logic": 6})


def test_swap_to_kedro_huggingface_json_dataset(tmp_path, native_frames):
    """kedro-datasets' own huggingface.JSONDataset loads a DatasetDict; the nodes accept it."""
    raw = {}
    for bench, frame in native_frames.items():
        path = tmp_path / f"{bench}.jsonl"
        frame.to_json(path, orient="records", lines=True)
        raw[f"{bench}_raw"] = {
            "type": "huggingface.JSONDataset",
            "path": str(path),
            "load_args": {"cache_dir": str(tmp_path / "hf_cache")},
        }
    _check_outputs(_run(raw, _small_params(), tmp_path), {"gsm8k": 6, "math": 6, "logic": 6})


def test_malformed_raw_rows_fail_the_run_with_the_row_named(tmp_path, native_frames):
    bad = native_frames["gsm8k"].copy()
    bad.loc[3, "answer"] = "no final line here"
    path = tmp_path / "gsm8k.parquet"
    bad.to_parquet(path)
    raw = {"gsm8k_raw": {"type": "pandas.ParquetDataset", "filepath": str(path)}}
    for bench in ("math", "logic"):
        native_frames[bench].to_parquet(tmp_path / f"{bench}.parquet")
        raw[f"{bench}_raw"] = {
            "type": "pandas.ParquetDataset",
            "filepath": str(tmp_path / f"{bench}.parquet"),
        }
    with pytest.raises(ValueError, match=r"gsm8k_raw row 3: answer has no '#### <number>'"):
        _run(raw, _small_params(), tmp_path)
