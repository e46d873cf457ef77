"""The planned budget (sae_reasoning/budget.py) and conf/paper's recipe it is printed for."""

from __future__ import annotations

import json
import math

import pytest
from kedro.config import OmegaConfigLoader

from sae_reasoning import budget as b
from sae_reasoning.models import ModelHandle, ModelSpec
from sae_reasoning.models.hooks import transformer_blocks
from sae_reasoning.pipelines.validate.nodes import add_budget
from tests.tiny_project import REPO, copy_project, kedro

# Parameter counts of the published checkpoints (model cards / safetensors metadata).
PUBLISHED = {
    "gpt2_medium": 354_823_168,
    "pythia_1_4b": 1_414_647_808,
    "gemma_2b": 2_506_172_416,
    "phi_2": 2_779_683_840,
    "llama3_8b": 8_030_261_248,
}
DEVICE = {"name": "test", "peak_tflops": 1.0, "mfu": 0.5}
BUDGET = {
    "device": DEVICE,
    "tokens_per_example": {"gsm8k": 10, "math": 5},
    "few_shot_tokens": 0,
    "answer_tokens": 2,
}
DATA = {
    "benchmarks": {
        "gsm8k": {"n_examples": 100},
        "math": {"n_examples": 40},
        "logic": {"n_examples": 0},
    }
}
CAUSAL = {
    "modes": ["zero"],
    "top_k": 2,
    "n_random_controls": 1,
    "n_null_features": 3,
    "max_examples_per_benchmark": 10,
}


def params(env: str | None) -> dict:
    return OmegaConfigLoader(str(REPO / "conf"), base_env="base", default_run_env="local", env=env)[
        "parameters"
    ]


@pytest.fixture(scope="module")
def paper():
    return params("paper")


def test_declared_shapes_give_the_published_parameter_counts(paper):
    for ns, n in PUBLISHED.items():
        shape = b.shape_from_config(b.config_from_shapes(paper["models"][ns]["shapes"]))
        assert shape.n_params == n, ns
        assert shape.n_layers > max(paper["models"][ns]["layers"])


def _keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _keys(v, f"{prefix}{k}.")
    return out


@pytest.mark.parametrize("block", ["capture", "sae_training", "budget"])
def test_paper_blocks_are_complete_copies_of_the_base_blocks(paper, block):
    # conf/paper replaces a top-level block whole: a key left out would silently vanish.
    base = params(None)[block]
    assert _keys(base) - _keys(paper[block]) == set(), f"conf/paper {block} lacks keys of conf/base"
    assert _keys(paper[block]) - _keys(base) == set(), (
        f"conf/paper {block} has keys conf/base lacks"
    )


def test_paper_recipe_is_field_scale(paper):
    cap, sae = paper["capture"], paper["sae_training"]
    assert cap["dtype"] == "bfloat16" and 10**7 <= cap["corpus"]["max_tokens"] <= 10**9
    assert 5e-5 <= sae["lr"] <= 3e-4 and sae["batch_size"] == 4096 and sae["lr_decay_fraction"] > 0
    assert "corpus" in sae["sources"]


def test_real_shapes_match_the_real_model(tiny_lms):
    # Tied embeddings (gpt2, gemma) count once, as in the loaded model.
    for family, lm in tiny_lms.items():
        shape = b.shape_from_config(lm.model.config)
        assert shape.n_params == sum(p.numel() for p in lm.model.parameters()), family
        blocks = transformer_blocks(lm.model)
        assert shape.block_params == tuple(
            sum(p.numel() for p in blk.parameters()) for blk in blocks
        )


def toy_shape() -> b.ModelShape:
    return b.ModelShape(
        d_model=8, n_layers=4, vocab_size=100, n_params=1000, block_params=(100, 200, 300, 400)
    )


def test_forward_flops_count_blocks_attention_and_unembedding():
    s = toy_shape()
    assert b.capture_flops(s, tokens=10, context=0, last_layer=1) == 2 * 300 * 10
    assert b.forward_flops(s, 10, context=5, first=2) == (2 * 700 + 2 * 2 * 5 * 8) * 10
    assert b.forward_flops(s, 1, 0, unembed=True) == 2 * 1000 + 2 * 8 * 100


def plan(**over) -> dict:
    kw = {
        "capture": {"dtype": "bfloat16", "corpus": {"max_tokens": 1000, "context_tokens": 10}},
        "sae_training": {
            "sources": ["corpus", "benchmarks"],
            "expansion_factor": 4,
            "batch_size": 100,
            "epochs": 1,
            "eval_every": 10,
        },
        "causal": CAUSAL,
        "data_loading": DATA,
        "budget": BUDGET,
    }
    model = over.pop("model", {"layers": [1, 3]})
    return b.plan_model("toy", toy_shape(), model, **{**kw, **over})


def test_plan_tokens_disk_and_hours():
    p = plan()
    bench = 100 * 10 + 40 * 5
    assert p["tokens"] == {
        "corpus": 1000,
        "benchmarks": bench,
        "captured": 1000 + bench,
        # one pass over the corpus and the benchmarks less the held-out tenth
        "sae_training_per_hook_point": math.ceil((1000 + bench * 0.9) / 100) * 100,
    }
    row = 8 * 2 + b.ROW_METADATA_BYTES  # bf16 row + metadata, at 2 hook points
    assert p["disk_bytes"]["corpus_activations"] == 1000 * row * 2
    assert (
        p["disk_bytes"]["saes"] == 2 * 4 * 2 * 8 * 32 * 4
    )  # two SAEs: weights + checkpoint (Adam m, v)
    sae_h = 2 * 12 * 8 * 32 * p["tokens"]["sae_training_per_hook_point"] / 0.5e12 / 3600
    assert p["device_hours"]["sae_training"] == pytest.approx(sae_h, rel=1e-2)
    capture = (
        (b.capture_flops(toy_shape(), 1000, 10, 3) + b.capture_flops(toy_shape(), bench, 10, 3))
        / 0.5e12
        / 3600
    )
    assert p["device_hours"]["capture"] == pytest.approx(capture, rel=1e-2)
    assert (
        p["hook_points"] == ["blocks.1.hook_resid_post", "blocks.3.hook_resid_post"]
        and p["d_sae"] == 32
    )


def test_benchmarks_only_and_pretrained_hook_points_cost_less():
    full = plan()
    bench_only = plan(
        sae_training={
            "sources": ["benchmarks"],
            "expansion_factor": 4,
            "batch_size": 100,
            "epochs": 1,
            "eval_every": 10,
        }
    )
    # The corpus is captured all the same (capture.corpus); only training reads less.
    assert bench_only["tokens"]["captured"] == full["tokens"]["captured"]
    assert (
        bench_only["tokens"]["sae_training_per_hook_point"]
        < full["tokens"]["sae_training_per_hook_point"]
    )
    pretrained = plan(
        model={"layers": [1, 3], "sae_source": {"blocks.4.hook_resid_pre": {"path": "x"}}}
    )
    assert pretrained["pretrained_sae_layers"] == [3]
    assert pretrained["device_hours"]["sae_training"] == pytest.approx(
        full["device_hours"]["sae_training"] / 2, abs=1e-3
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"data_loading": {"benchmarks": {"gsm8k": {"n_examples": None}}}},
            "gsm8k.n_examples is null",
        ),
        (
            {"budget": {**BUDGET, "tokens_per_example": {"gsm8k": 10}}},
            "no entry for benchmark 'math'",
        ),
        (
            {"budget": {"tokens_per_example": {}}},
            r"params:budget.device needs \['name', 'peak_tflops', 'mfu'\]",
        ),
        ({"model": {"layers": [4]}}, "layers \\[4\\] for a model of 4 blocks"),
    ],
)
def test_bad_configuration_names_what_is_wrong(change, message):
    with pytest.raises(b.BudgetError, match=message):
        plan(**change)


def test_missing_config_falls_back_to_declared_shapes_else_says_so(tmp_path):
    handle = ModelHandle(ModelSpec("ghost", str(tmp_path / "absent"), converted_cache=None))
    kw = {
        "capture": {},
        "sae_training": {"sources": ["benchmarks"], "batch_size": 64},
        "causal": CAUSAL,
        "data_loading": DATA,
        "budget": BUDGET,
    }
    out = b.plan(handle, "ghost", {"layers": [0]}, **kw)
    assert "error" in out and "no `shapes` in params:models.ghost" in out["error"]
    shapes = {
        "model_type": "llama",
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "vocab_size": 50,
    }
    out = b.plan(handle, "ghost", {"layers": [1], "shapes": shapes}, **kw)
    assert out["shapes_from"] == "params:models.ghost.shapes" and out["d_model"] == 16
    assert (
        out["memory"]["need_gb"] > 0 and "weights" in out["memory"]["how"]
    )  # the runner's estimate
    declared = b.plan(handle, "ghost", {"layers": [1], "shapes": shapes, "memory_gb": 7}, **kw)
    # the runner's own rule for memory_gb, so the plan and the placement name the same need
    assert declared["memory"] == {"need_gb": 7, "how": "memory_gb in params:models.ghost"}


def test_add_budget_keeps_the_checks_and_prints_the_table(caplog):
    checks = {
        "ok": False,
        "failed": ["toy"],
        "models": [{"model": "toy", "ok": False, "error": "no weights"}],
    }
    with caplog.at_level("INFO"):
        report = add_budget(
            checks, {"n_devices": 2}, plan(), {"model": "other", "error": "no shapes"}
        )
    assert report["failed"] == ["toy"] and report["budget"]["models"][0]["model"] == "toy"
    assert (
        report["budget"]["total"]["wall_hours_at_least"]
        >= report["budget"]["total"]["device_hours"] / 2
    )
    assert "toy" in caplog.text and "other  no budget: no shapes" in caplog.text
    json.dumps(report)


@pytest.mark.slow
def test_validate_env_paper_prints_the_budget_without_weights(tmp_path):
    root = copy_project(tmp_path / "proj")
    run = kedro(root, "--pipeline=validate", "--env=paper", timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode != 0 and "pre-flight check failed" in log  # the checks still fail here...
    assert "Planned budget" in log and "llama3_8b" in log  # ...after the budget printed
    report = json.loads((root / "data/08_reporting/validation.json").read_text())
    plans = {p["model"]: p for p in report["budget"]["models"]}
    assert set(plans) == set(PUBLISHED) and not any("error" in p for p in plans.values())
    llama = plans["llama3_8b"]
    assert llama["n_params"] == PUBLISHED["llama3_8b"] and llama["storage_dtype"] == "bfloat16"
    assert llama["disk_gib"]["corpus_activations"] > 700 and llama["device_hours"]["total"] > 0
    assert llama["memory"]["model_dtype"] == "bfloat16"
