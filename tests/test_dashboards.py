"""Feature dashboards: a planted feature's histogram and contexts, logit tables and neighbours
against direct computations, and the node's site through the catalog (self-contained HTML)."""

import json
import re

import numpy as np
import pytest
import torch

from sae_reasoning.activations import ActivationSet
from sae_reasoning.activations.store import MassiveActivationFilter, ShardWriter
from sae_reasoning.dashboards import DashboardConfig, dashboard_data
from sae_reasoning.dashboards.scan import feature_encoder
from sae_reasoning.dashboards.weights import decoder_neighbours, direct_logit_effect, logit_tables
from sae_reasoning.models import ModelHandle, ModelSpec
from sae_reasoning.sae import SAEConfig, build_sae
from tests import dashboards_fixture

D, HOOK = 64, "blocks.1.hook_resid_post"
PLANTED = 7


@pytest.fixture(scope="module")
def llama(tiny_model_dirs):
    return ModelHandle(ModelSpec("tiny", str(tiny_model_dirs["llama"]), converted_cache=None)).load(
        "cpu"
    )


def planted_store(root, tokenizer, rng):
    """Two benchmarks of 12 examples x ~20 tokens; every " apples" token carries u with a known
    activation, all other rows are orthogonal to u; one position-0 row too, massive (left out)."""
    u = torch.nn.functional.normalize(
        torch.randn(D, generator=torch.Generator().manual_seed(1)), dim=0
    )
    text = "Question: how many apples does Tom have if the apples are left plus each total?"
    ids = tokenizer(text)["input_ids"][:20]
    target = tokenizer(" apples")["input_ids"][0]
    assert ids.count(target) == 2
    planted = []
    for b, bench in enumerate(["arith", "logic"]):
        w = ShardWriter(
            root / bench / HOOK,
            header={"model": "tiny", "benchmark": bench, "hook_point": HOOK},
            d_model=D,
            shard_tokens=64,
        )
        for ex in range(12):
            x = torch.as_tensor(rng.normal(size=(len(ids), D)), dtype=torch.float32)
            x -= (x @ u)[:, None] * u  # nothing along u
            for p, t in enumerate(ids):
                if t == target:
                    a = float(rng.uniform(0.5, 3.0))
                    x[p] += (1.0 + a) * u  # activation 1 + a - 1 = a
                    planted.append((bench, ex, p, a))
            if b == 0 and ex == 0:
                x[0] += 1000.0 * u  # massive: left out
            w.add(x, example_index=[ex] * len(ids), position=list(range(len(ids))), token_id=ids)
        w.close()
    return ActivationSet.open(root), u, target, planted, len(ids)


def planted_sae(u):
    sae = build_sae(SAEConfig(d_in=D, d_sae=16, hook_name=HOOK, hook_layer=1))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(16, D, generator=g))
        sae.W_enc.copy_(torch.randn(D, 16, generator=g) * 0.05)
        sae.b_enc.fill_(-10.0)  # every other feature silent
        sae.W_enc[:, PLANTED] = u
        sae.b_enc[PLANTED] = -1.0
    return sae


def test_planted_feature_histogram_and_contexts(llama, tmp_path):
    rng = np.random.default_rng(0)
    acts, u, target, planted, n_ids = planted_store(tmp_path, llama.tokenizer, rng)
    cfg = DashboardConfig(
        n_contexts=5,
        histogram_bins=8,
        window_before=4,
        window_after=2,
        n_quantiles=4,
        per_quantile=2,
        exclude=MassiveActivationFilter(),
    )
    ranking = [{"rank": 1, "feature": PLANTED}]
    d = dashboard_data(
        llama,
        planted_sae(u),
        HOOK,
        acts,
        ranking=ranking,
        effects=_no_effects(),
        circuit_nodes=[],
        token_injection={},
        benchmarks=["arith", "logic"],
        cfg=cfg,
        model_name="tiny",
    )
    page = d["features"][str(PLANTED)]
    values = np.array([a for *_, a in planted])
    # Histogram of the nonzero activations: exactly the planted values (the massive row is out).
    assert page["histogram"]["n_nonzero"] == len(values)
    counts, edges = np.histogram(values, bins=8)
    assert page["histogram"]["counts"] == counts.tolist()
    assert np.allclose(page["histogram"]["edges"], edges, atol=1e-5)
    kept = 2 * 12 * (n_ids - 1)  # position 0 of every example is left out
    assert page["firing_rate"] == pytest.approx(len(values) / kept)
    # Top contexts: the strongest planted tokens, in order, each on " apples", shaded around.
    top = sorted(planted, key=lambda r: -r[3])[:5]
    got = page["top_contexts"]
    assert [(c["benchmark"], c["example_index"], c["position"]) for c in got] == [
        r[:3] for r in top
    ]
    assert [c["activation"] for c in got] == pytest.approx([r[3] for r in top], abs=1e-4)
    for c in got:
        here = [t for t in c["tokens"] if t["here"]]
        assert len(here) == 1 and here[0]["text"] == llama.tokenizer.decode([target])
        assert here[0]["act"] == pytest.approx(c["activation"])
        assert len(c["tokens"]) <= 4 + 1 + 2
        # Other tokens do not fire; position 0 (left out by the massive-activation rule) has none.
        others = [t["act"] for t in c["tokens"] if t["text"] != here[0]["text"]]
        assert all(a == 0 for a in others[1 if c["position"] <= 4 else 0 :])
        assert (others[0] is None) == (c["position"] <= 4)
    # Quantile samples: highest group first, each context inside its group's activation range.
    qs = page["quantiles"]
    assert [q["quantile"] for q in qs] == [[0.75, 1.0], [0.5, 0.75], [0.25, 0.5], [0.0, 0.25]]
    assert sum(q["n"] for q in qs) == len(values)
    for q in qs:
        lo, hi = q["activation_range"]
        assert len(q["contexts"]) == 2
        assert all(lo - 1e-5 <= c["activation"] <= hi + 1e-5 for c in q["contexts"])
    assert d["scanned_tokens"] == {"arith": kept // 2, "logic": kept // 2}


def _no_effects():
    import pandas as pd

    return pd.DataFrame(columns=["feature", "role", "mode", "benchmark"])


def test_feature_local_encoder_matches_the_full_encode():
    sae = planted_sae(torch.nn.functional.normalize(torch.ones(D), dim=0))
    with torch.no_grad():
        sae.b_enc.normal_(0.0, 0.5)
    x = torch.randn(50, D)
    feats = [3, PLANTED, 11]
    assert torch.allclose(feature_encoder(sae, feats)(x), sae.encode(x)[:, feats], atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_logit_tables_match_a_direct_computation(tiny_model_dirs, family):
    lm = ModelHandle(ModelSpec(family, str(tiny_model_dirs[family]), converted_cache=None)).load(
        "cpu"
    )
    norm = lm.model.model.norm if family == "llama" else lm.model.transformer.ln_f
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-trivial norm weights (and LayerNorm bias)
        norm.weight.copy_(torch.rand(D, generator=g) + 0.5)
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(torch.randn(D, generator=g))
    dirs = torch.randn(3, D, generator=g)
    if family == "llama":  # RMSNorm: d / rms(d) * w
        eps = lm.model.config.rms_norm_eps
        through = dirs / (dirs.pow(2).mean(-1, keepdim=True) + eps).sqrt() * norm.weight
    else:  # LayerNorm: (d - mean) / std * w, its bias not a direction effect
        c = dirs - dirs.mean(-1, keepdim=True)
        through = c / (c.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt() * norm.weight
    expected = through @ lm.model.get_output_embeddings().weight.T
    got = direct_logit_effect(lm.model, dirs)
    assert torch.allclose(got, expected.detach(), atol=1e-4)
    tables = logit_tables(got, lm.tokenizer.decode, 5)
    for row, t in zip(expected, tables):
        assert [x["token_id"] for x in t["promoted"]] == row.topk(5).indices.tolist()
        assert [x["token_id"] for x in t["suppressed"]] == (-row).topk(5).indices.tolist()
        assert t["promoted"][0]["token"] == lm.tokenizer.decode([t["promoted"][0]["token_id"]])


def test_nearest_features_by_decoder_cosine():
    g = torch.Generator().manual_seed(4)
    W = torch.randn(40, D, generator=g)
    W[5] = 3.0 * W[2] + 0.1 * torch.randn(
        D, generator=g
    )  # nearly parallel (longer: cosine ignores length)
    W[9] = -W[2]  # opposite: never a neighbour
    got = decoder_neighbours(W, [2, 17], 6)
    Wn = (W / W.norm(dim=1, keepdim=True)).numpy()
    for feat, row in zip([2, 17], got):
        cos = Wn @ Wn[feat]
        cos[feat] = -np.inf
        order = np.argsort(-cos)[:6]
        assert [n["feature"] for n in row] == order.tolist()
        assert [n["cosine"] for n in row] == pytest.approx(cos[order].tolist(), abs=1e-5)
    assert got[0][0]["feature"] == 5 and 9 not in [n["feature"] for n in got[0]]


def test_bad_parameters_name_the_parameter():
    with pytest.raises(ValueError, match=r"dashboards: unknown parameter\(s\) \['n_context'\]"):
        DashboardConfig.from_params({"n_context": 5})
    with pytest.raises(ValueError, match=r"dashboards.window_before = -1"):
        DashboardConfig.from_params({"window_before": -1})


@pytest.fixture(scope="module")
def site(tiny_model_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("dash")
    out, catalog = dashboards_fixture.build(tiny_model_dirs["llama"], root)
    return out, catalog, root / "features" / "tiny" / dashboards_fixture.HOOK


def test_node_site_through_the_catalog_is_self_contained(site):
    out, catalog, folder = site
    d = out["hook_points"][dashboards_fixture.HOOK]
    roles = {r["feature"]: r["roles"] for r in d["index"]}
    # The causal stage's analysed features: 4 candidates (ranks 1-4), 2 controls, circuit members.
    assert sorted(r["rank"] for r in d["index"] if r["rank"]) == [1, 2, 3, 4]
    assert sum("control" in v for v in roles.values()) == 2
    assert all(set(v) <= {"candidate", "control", "circuit"} for v in roles.values())
    cand = next(r for r in d["index"] if r["rank"] == 1)
    assert set(cand["per_benchmark"]) == {"arith", "logic"} and cand["q_logprob"] is not None
    files = {p.name for p in folder.iterdir()}
    assert files == {"index.html", "dashboard.json", *(f"feature_{f}.html" for f in roles)}
    for path in folder.glob("*.html"):
        html = path.read_text()
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.IGNORECASE), path.name
        for ref in re.findall(r'(?:href|src)="([^"]*)"', html):
            assert (folder / ref).is_file(), (path.name, ref)
    assert catalog.load("tiny.feature_dashboards") == json.loads(json.dumps(out))
    # A second save with fewer features leaves no stale pages behind.
    fewer = json.loads(json.dumps(out))
    hook = fewer["hook_points"][dashboards_fixture.HOOK]
    hook["index"] = hook["index"][:1]
    hook["features"] = {
        str(hook["index"][0]["feature"]): hook["features"][str(hook["index"][0]["feature"])]
    }
    catalog.save("tiny.feature_dashboards", fewer)
    assert len(list(folder.glob("feature_*.html"))) == 1
    catalog.save("tiny.feature_dashboards", out)
