"""The numerical floor: effects at rounding level count as 0, real effects are untouched."""

import contextlib

import numpy as np
import pandas as pd
import pytest
import torch

from sae_reasoning.causal.effects import condition_effects
from sae_reasoning.causal.floor import NumericalFloor, measure_floor, snap
from sae_reasoning.models.hooks import patch_residual
from sae_reasoning.scoring import Scorer, encode_prompts
from tests.prompts_fixture import tiny_prompts

LAYER = 1


def _floor(lp: float, ld: float = 0.0) -> NumericalFloor:
    return NumericalFloor({"logprob": lp, "logit_diff": ld}, {}, {}, 2.0, (8, 1))


def test_snap_replaces_only_changes_within_the_floor():
    clean = pd.DataFrame({"row": [0, 1, 2], "gold_logprob": [-1.0, -2.0, -3.0]})
    clean["logit_diff"] = [0.5, np.nan, 1.0]
    cond = pd.DataFrame({"row": [2, 0, 1], "gold_logprob": [-3.0 + 2e-6, -1.0 - 5e-6, -2.5]})
    cond["logit_diff"] = [1.0 + 1e-3, 0.5 + 1e-7, 0.7]
    out = snap({"clean": clean, "a": cond}, _floor(4e-6, 1e-6))
    a = out["a"].set_index("row")
    assert a.loc[2, "gold_logprob"] == -3.0  # within: the clean value, exactly
    assert a.loc[0, "gold_logprob"] == -1.0 - 5e-6  # beyond: kept
    assert a.loc[1, "gold_logprob"] == -2.5
    assert a.loc[0, "logit_diff"] == 0.5 and a.loc[2, "logit_diff"] == 1.0 + 1e-3
    assert a.loc[1, "logit_diff"] == 0.7  # clean NaN: nothing to snap to
    assert out["clean"] is clean and cond.loc[0, "gold_logprob"] == -3.0 + 2e-6  # not mutated


@pytest.fixture(scope="module")
def scored(tiny_lms):
    lm = tiny_lms["llama"]
    encoded = encode_prompts(lm.tokenizer, tiny_prompts(n_open=24, n_choice=16))
    u = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))

    def push(eps):  # a planted effect: every answer position moved by eps along u
        def cond(_batch, _segment):
            return patch_residual(lm.model, LAYER, lambda r: r + eps * r.norm() * u / u.norm())

        return cond

    conds = {
        "splice:none": lambda _b, _s: contextlib.nullcontext(),
        "rounding": push(1e-9),
        "real": push(0.5),
    }
    scorer = Scorer(lm, LAYER, batch_size=8)
    return scorer, encoded, scorer.score(encoded, conds, progress=None, alone=True)


def test_the_floor_is_measured_from_the_clean_rows_one_example_a_pass(scored):
    scorer, encoded, scores = scored
    floor = measure_floor(scores, 2.0, scorer.batch_size)
    assert floor.batch_sizes == (8, 1)
    # Every example's rows alone sum in another order: a change, at float32 resolution.
    assert 0 < floor.rebatched["logprob"] < 1e-4
    assert floor.identity["logprob"] == 0.0  # the no-op condition ran like clean: no change
    assert floor.floor["logprob"] == 2.0 * floor.rebatched["logprob"]
    with pytest.raises(ValueError, match="numerical_floor_factor"):
        measure_floor(scores, -1.0, scorer.batch_size)


def _effect(scores, name, floor):
    s = snap(scores, floor) if floor is not None else scores
    clusters = pd.Series([f"r{r}" for r in s["clean"]["row"]], index=s["clean"]["row"])
    eff = condition_effects(s["clean"], s[name], clusters, n_boot=200, seed=0)
    return eff.set_index("benchmark").loc["all"]


def test_a_rounding_level_effect_counts_as_zero_and_a_real_one_is_kept(scored):
    scorer, encoded, scores = scored
    floor = measure_floor(scores, 2.0, scorer.batch_size)
    raw = _effect(scores, "rounding", None)
    assert raw["delta_logprob"] != 0  # without the floor, rounding makes an "effect" ...
    tiny = _effect(scores, "rounding", floor)
    assert tiny["delta_logprob"] == 0 and tiny["p_logprob"] == 1.0  # ... the floor removes it
    real_raw, real = _effect(scores, "real", None), _effect(scores, "real", floor)
    assert abs(real["delta_logprob"]) > 100 * floor.floor["logprob"]
    for col in ("delta_logprob", "delta_logprob_lo", "delta_logprob_hi", "p_logprob"):
        assert real[col] == pytest.approx(real_raw[col], abs=1e-6)


def test_no_op_conditions_have_no_effect_with_the_floor(scored):
    scorer, encoded, scores = scored
    floor = measure_floor(scores, 2.0, scorer.batch_size)
    null = _effect(scores, "splice:none", floor)
    assert null["delta_logprob"] == 0 and null["p_logprob"] == 1.0
    assert null["kl"] == 0.0
