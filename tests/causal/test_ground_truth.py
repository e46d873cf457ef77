"""Ground truth: a model whose answer rides on one known residual direction, and an SAE
with one feature that reads and writes exactly that direction. The method must find it."""

import networkx as nx
import pytest
import torch

from sae_reasoning.causal.analysis import CausalConfig, analyse_hook, statistics_of
from sae_reasoning.causal.circuits import circuit_graph, find_circuit
from sae_reasoning.causal.selection import subset
from sae_reasoning.models import ModelHandle, ModelSpec
from sae_reasoning.models.hooks import capture_residuals, hook_point
from sae_reasoning.sae import SAEConfig, build_sae
from sae_reasoning.scoring import Scorer, encode_prompts
from tests.prompts_fixture import tiny_prompts

LAYER, TRUE = 1, 5  # the SAE's layer; the index of the feature that carries the answer


@pytest.fixture(scope="module")
def planted(tiny_model_dirs):
    lm = ModelHandle(
        ModelSpec("planted", str(tiny_model_dirs["llama"]), converted_cache=None)
    ).load("cpu")
    model, d = lm.model, lm.d_model
    # Blocks above the SAE write nothing: the final residual is the one at the SAE's layer.
    for block in model.model.layers[LAYER + 1 :]:
        torch.nn.init.zeros_(block.self_attn.o_proj.weight)
        torch.nn.init.zeros_(block.mlp.down_proj.weight)
    u = torch.randn(d, generator=torch.Generator().manual_seed(1234))
    u /= u.norm()
    prompts = tiny_prompts(n_open=24, n_choice=16)
    encoded = encode_prompts(lm.tokenizer, prompts)
    gold = sorted({t for b in encoded for e in b.examples for t in e.answers[e.gold]})
    # The gold answer tokens are read out along u (untied head: the embedding is not touched).
    head = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    with torch.no_grad():
        head[gold] += 4.0 * u
    model.lm_head.weight = head

    d_sae = 4 * d
    sae = build_sae(SAEConfig(d_in=d, d_sae=d_sae, hook_name=hook_point(LAYER), hook_layer=LAYER))
    g = torch.Generator().manual_seed(1)
    proj = torch.eye(d) - torch.outer(u, u)  # every other feature ignores u entirely
    with torch.no_grad():
        sae.W_enc.copy_(proj @ torch.randn(d, d_sae, generator=g) / d**0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d, generator=g) @ proj / d**0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.b_dec.zero_()
        # The planted feature: always on (bias), reads u, writes u.
        sae.W_enc[:, TRUE] = u
        sae.b_enc[TRUE] = 3.0
        sae.W_dec[TRUE] = u
    ids = lm.tokenizer(prompts.prompt.tolist()[:4], return_tensors="pt", padding=True)
    resid = capture_residuals(model, ids["input_ids"], ids["attention_mask"], [LAYER])[LAYER]
    stats = statistics_of(sae.encode(resid[ids["attention_mask"].bool()]).detach())
    return lm, sae, encoded, stats


def test_the_planted_feature_is_ranked_first_and_is_the_circuit(planted):
    lm, sae, encoded, stats = planted
    cfg = CausalConfig(
        top_k=4,
        n_random_controls=20,
        n_null_features=20,
        n_random_sets=2,
        n_random_directions=2,
        batch_size=8,
        n_boot=200,
        circuit_fraction=0.8,
        circuit_mode="zero",
        modes=("zero", "mean"),
    )
    select, heldout = subset(encoded, "select", 99, 0), subset(encoded, "heldout", 99, 0)
    eff, ranking, summary, circuit = analyse_hook(
        lm, sae, hook_point(LAYER), select, heldout, stats, cfg
    )

    # Attribution on the select split and exact ablation on the held-out split agree.
    top = ranking[0]
    assert top["feature"] == TRUE
    assert top["attribution_estimate"] == min(r["attribution_estimate"] for r in ranking)
    assert top["delta_logprob_ci"][1] < 0 and top["q_logprob"] < 0.05
    assert all(r["delta_logprob"] > top["delta_logprob"] / 5 for r in ranking[1:])

    # Importance: the planted feature is significant and beyond the null of random live
    # features; random controls, through the same procedure, pass at about the rate the
    # criterion implies (<= 5% of them beyond the null's 95th percentile, fewer once BH applies).
    assert top["important"] and abs(top["delta_logprob"]) > top["null_threshold_logprob"]
    sig = summary["significance"]
    assert sig["controls"]["tested"] == 20 and sig["controls"]["important"] <= 3
    assert sig["n_null_features"] == 20 and sig["candidates"]["important"] >= 1
    assert all(
        not r["important"]
        for r in ranking[1:]
        if abs(r["delta_logprob"]) < r["null_threshold_logprob"]
    )

    # Controls are far weaker than the top-K set, which holds the planted feature, and the
    # paired tests say so.
    c = summary["controls"]
    assert all(x["delta_logprob"] > top["delta_logprob"] / 5 for x in c["random_feature_sets"])
    assert all(
        x["delta_logprob"] > c["top_k_set"]["delta_logprob"] / 3 for x in c["random_directions"]
    )
    assert len(c["comparisons"]) == 4 and all(
        x["hi"] < 0 and x["p"] < 0.05 for x in c["comparisons"]
    )
    assert 0 <= summary["error_term"]["error_share"] <= 1
    assert summary["splice_identity_max_abs_logprob_change"] < 1e-4

    # The circuit is the planted feature alone, and it is faithful and complete, with CIs, in
    # both variants: the empty circuit with the error term ablated (Marks et al.) and kept.
    s = summary["circuit"]
    assert s["found"] and [f["feature"] for f in circuit["features"]] == [TRUE]
    assert s["share_of_alive"] == pytest.approx(1 / summary["alive_features"])
    kept = s["error_kept"]
    assert kept["withheld"] is None and kept["faithfulness"] > 0.8 and kept["completeness"] < 0.2
    assert kept["faithfulness_ci"][0] <= kept["faithfulness"] <= kept["faithfulness_ci"][1]
    assert kept["faithfulness"] == pytest.approx(
        1 - s["heldout_delta_circuit_only"]["delta_logprob"] / s["heldout_delta_all"]
    )
    # Marks et al.'s default ablates the error term in the empty circuit and the circuit alone.
    # This planted SAE's other features are random, so its error term carries the rest of the
    # residual, and the circuit alone without it is not faithful: the variants must differ.
    ablated = s["error_ablated"]
    m_empty = s["heldout_delta_all_and_error"]
    assert m_empty != pytest.approx(s["heldout_delta_all"]) and ablated[
        "denominator"
    ] == pytest.approx(-m_empty)
    assert ablated["faithfulness"] == pytest.approx(
        1 - s["heldout_delta_circuit_only_error_ablated"]["delta_logprob"] / m_empty
    )
    assert ablated["completeness"] == pytest.approx(
        1 - s["heldout_delta_circuit_ablated"]["delta_logprob"] / m_empty
    )
    assert (
        s["faithfulness"] == ablated["faithfulness"]
        and s["completeness"] == ablated["completeness"]
    )

    # Statistics sit beside every effect; single features get BH q-values.
    single = eff[eff.role.isin(["candidate", "control", "null"]) & (eff.benchmark != "all")]
    assert single.q_logprob.notna().all() and (single.q_logprob >= single.p_logprob - 1e-12).all()
    assert (eff.delta_logprob_lo <= eff.delta_logprob + 1e-9).all()
    assert (eff.delta_logprob <= eff.delta_logprob_hi + 1e-9).all()

    g = circuit_graph("planted", {hook_point(LAYER): circuit})
    assert isinstance(g, nx.DiGraph)
    assert list(g.predecessors("answer")) == [f"{hook_point(LAYER)}/{TRUE}"]
    assert g.graph[hook_point(LAYER)]["faithfulness"] == s["faithfulness"]


def test_a_model_whose_answer_ignores_the_residual_has_no_important_feature(planted):
    """Null model: the unembedding reads nothing, so no feature can move the answer; the
    procedure must find nothing (no significant, no important feature, no circuit)."""
    lm, sae, encoded, stats = planted
    head = lm.model.lm_head.weight
    saved = head.detach().clone()
    with torch.no_grad():
        head.zero_()
    try:
        cfg = CausalConfig(
            top_k=4,
            n_random_controls=4,
            n_null_features=20,
            n_random_sets=1,
            n_random_directions=1,
            batch_size=8,
            n_boot=200,
            circuit_mode="zero",
            modes=("zero",),
        )
        eff, ranking, summary, _ = analyse_hook(
            lm,
            sae,
            hook_point(LAYER),
            subset(encoded, "select", 99, 0),
            subset(encoded, "heldout", 99, 0),
            stats,
            cfg,
        )
    finally:
        with torch.no_grad():
            head.copy_(saved)
    sig = summary["significance"]
    assert sig["candidates"]["significant"] == 0 and sig["candidates"]["important"] == 0
    assert sig["controls"]["important"] == 0 and not any(r["important"] for r in ranking)
    assert not summary["circuit"]["found"]


@pytest.mark.parametrize("refine", [1, 4])
def test_circuit_search_narrows_to_adjacent_sizes(planted, refine):
    """The planted feature placed 6th in the order: the smallest passing prefix is the top 6,
    which the doubling sizes (4 fails, 8 passes) alone would miss."""
    lm, sae, encoded, stats = planted
    live = [f for f in torch.nonzero(stats["firing_rate"] > 0).flatten().tolist() if f != TRUE]
    order = live[:5] + [TRUE] + live[5:]
    select = subset(encoded, "select", 99, 0)
    estimate = torch.zeros(sae.cfg.d_sae)
    search = find_circuit(
        Scorer(lm, LAYER, batch_size=8),
        sae,
        select,
        order,
        estimate,
        fraction=0.8,
        refine=refine,
        mode="zero",
    )
    assert search.found and search.features == order[:6]
    assert search.checked[6] >= 0.8 > search.checked[5]
    assert all(share < 0.8 for k, share in search.checked.items() if k < 6)
    assert {1, 2, 4, 8} <= set(search.checked)
    with pytest.raises(ValueError, match="Scorer with the SAE's layer"):
        find_circuit(Scorer(lm), sae, select, order, estimate)
