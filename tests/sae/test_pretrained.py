"""Pretrained SAEs (sae/pretrained.py): `sae_source` parsing, the registry path through SAELens
from a Hugging Face cache built here, the conversion checked against SAELens's own
encode/decode, the job's reuse, and resid_pre hook names (models/hooks.py)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from sae_reasoning.models.hooks import (
    HookPointError,
    canonical_hook_point,
    capture_residuals,
    parse_hook_point,
    transformer_blocks,
)
from sae_reasoning.sae.pretrained import (
    PretrainedSAEJob,
    SAESource,
    SAESourceError,
    fold_input_centring,
    load_registry,
    parse_sae_sources,
)
from tests.sae.hf_cache import COMMIT, D_IN, D_SAE, RELEASE, REPO_ID, write_registry_sae

HOOKS = ["blocks.1.hook_resid_post", "blocks.3.hook_resid_post"]


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An offline HF cache holding gpt2-small-res-jb's blocks.2.hook_resid_pre."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    write_registry_sae(cache)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hook_names_resid_pre_is_the_previous_block_output():
    assert canonical_hook_point("blocks.8.hook_resid_pre") == "blocks.7.hook_resid_post"
    assert canonical_hook_point("blocks.7.hook_resid_post") == "blocks.7.hook_resid_post"
    assert parse_hook_point("blocks.8.hook_resid_pre") == 7
    with pytest.raises(HookPointError, match="embedding output"):
        canonical_hook_point("blocks.0.hook_resid_pre")
    for bad in ("blocks.3.hook_resid_mid", "blocks.3.hook_mlp_out", "blocks.3.attn.hook_z"):
        with pytest.raises(HookPointError, match="residual stream"):
            canonical_hook_point(bad)
    with pytest.raises(HookPointError, match="4 blocks"):
        canonical_hook_point("blocks.5.hook_resid_pre", n_layers=4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_resid_pre_tensor_equals_previous_resid_post(tiny_lms, family):
    """The input of block L (what a resid_pre SAE reads) is the output of block L-1."""
    lm = tiny_lms[family]
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    seen = {}

    def block_input(_module, args, kwargs):
        seen["in"] = (args[0] if args else kwargs["hidden_states"]).clone()

    handle = transformer_blocks(lm.model)[2].register_forward_pre_hook(
        block_input, with_kwargs=True
    )
    try:
        with torch.no_grad():
            lm.model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    post = capture_residuals(lm.model, ids, None, [parse_hook_point("blocks.2.hook_resid_pre")])[1]
    torch.testing.assert_close(seen["in"], post)


def test_parse_sae_sources_by_layer_or_hook_and_clear_errors():
    got = parse_sae_sources(
        {
            "sae_source": {
                1: {"path": "/x"},
                "blocks.4.hook_resid_pre": {"release": "r", "sae_id": "s"},
            }
        },
        HOOKS,
        "toy",
    )
    assert got == {HOOKS[0]: SAESource(path="/x"), HOOKS[1]: SAESource(release="r", sae_id="s")}
    assert parse_sae_sources({"layers": [1]}, HOOKS) == {}
    cases = [
        (
            {2: {"path": "/x"}},
            r"models\.toy\.sae_source\[2\].*blocks\.2\.hook_resid_post.*not one of",
        ),
        (
            {"blocks.3.hook_mlp_out": {"path": "/x"}},
            r"sae_source\['blocks\.3\.hook_mlp_out'\].*residual",
        ),
        ({1: {"path": "/x", "release": "r", "sae_id": "s"}}, "either `path`"),
        ({1: {"release": "r"}}, "both `release` and `sae_id`"),
        ({1: "gpt2-small-res-jb"}, "expected"),
        ({1: {"path": "/x"}, "blocks.2.hook_resid_pre": {"path": "/y"}}, "already has a source"),
    ]
    for raw, match in cases:
        with pytest.raises(SAESourceError, match=match):
            parse_sae_sources({"sae_source": raw}, HOOKS, "toy")


def test_registry_sae_through_saelens_matches_its_encode_decode(hf_cache):
    """SAELens loads the registry entry from the cache; our SAE computes the same codes and
    reconstructions (with the centring SAELens's config says the SAE was trained on)."""
    import sae_lens

    ours, prov = load_registry(SAESource(release=RELEASE, sae_id="blocks.2.hook_resid_pre"))
    theirs = sae_lens.SAE.from_pretrained(RELEASE, "blocks.2.hook_resid_pre", device="cpu")
    x = torch.randn(200, D_IN, generator=torch.Generator().manual_seed(1)) * 3 + 1.5
    xc = x - x.mean(-1, keepdim=True)
    torch.testing.assert_close(ours.encode(x), theirs.encode(xc), rtol=1e-5, atol=1e-5)
    assert (ours.encode(x) > 0).any()  # the comparison is not vacuous
    torch.testing.assert_close(
        ours.decode(ours.encode(x)), theirs.decode(theirs.encode(xc)), rtol=1e-5, atol=1e-5
    )
    folder = (
        hf_cache
        / f"models--{REPO_ID.replace('/', '--')}"
        / "snapshots"
        / COMMIT
        / "blocks.2.hook_resid_pre"
    )
    assert prov["commit"] == COMMIT and prov["repo_id"] == REPO_ID
    assert (
        prov["files"]["sae_weights.safetensors"]
        == hashlib.sha256((folder / "sae_weights.safetensors").read_bytes()).hexdigest()
    )
    assert (prov["d_in"], prov["d_sae"], prov["hook_name"]) == (
        D_IN,
        D_SAE,
        "blocks.2.hook_resid_pre",
    )
    assert prov["sae_lens_version"] == sae_lens.__version__ and prov["adjustments"]


def test_centring_fold_is_exact_for_every_input():
    from tests.sae.test_architectures import random_sae

    sae = random_sae("relu")
    with torch.no_grad():
        sae.b_dec.add_(0.7)  # an uncentred b_dec: b_enc must absorb its mean
    x = torch.randn(30, sae.d_in, dtype=sae.dtype) + 2.0
    want = sae.encode(x - x.mean(-1, keepdim=True))
    assert not torch.allclose(sae.encode(x), want)
    fold_input_centring(sae)
    torch.testing.assert_close(sae.encode(x), want)


def test_job_writes_provenance_then_reuses_and_checks_width(hf_cache, tmp_path, caplog):
    source = SAESource(release=RELEASE, sae_id="blocks.2.hook_resid_pre")
    job = PretrainedSAEJob("blocks.1.hook_resid_post", source, d_model=D_IN, model="gpt2")
    folder = tmp_path / "sae" / "blocks.1.hook_resid_post"
    sae = job.run(folder)
    summary = json.loads((folder / "training_summary.json").read_text())
    assert summary["fingerprint"] == job.fingerprint and summary["source"]["release"] == RELEASE
    assert summary["source"]["hook_point"] == "blocks.1.hook_resid_post"
    assert (
        json.loads((folder / "cfg.json").read_text())["metadata"]["hook_name"]
        == "blocks.2.hook_resid_pre"
    )
    weights = (folder / "sae_weights.safetensors").read_bytes()
    with caplog.at_level("INFO", logger="sae_reasoning"):
        again = PretrainedSAEJob(
            "blocks.1.hook_resid_post", source, d_model=D_IN, model="gpt2"
        ).run(folder)
    assert "reusing pretrained SAE" in caplog.text
    assert (folder / "sae_weights.safetensors").read_bytes() == weights
    torch.testing.assert_close(again.W_enc, sae.W_enc)
    with pytest.raises(SAESourceError, match=r"'gpt2'.*d_in is 768 but the model's d_model is 64"):
        PretrainedSAEJob("blocks.1.hook_resid_post", source, d_model=64, model="gpt2").run(
            tmp_path / "other"
        )
    with pytest.raises(
        SAESourceError, match=r"trained at blocks\.2\.hook_resid_pre.*not blocks\.3"
    ):
        PretrainedSAEJob("blocks.3.hook_resid_post", source, d_model=D_IN).run(tmp_path / "third")


def test_unknown_registry_entry_names_the_release(hf_cache):
    with pytest.raises(SAESourceError, match="no-such-release"):
        load_registry(SAESource(release="no-such-release", sae_id="x"))
    with pytest.raises(SAESourceError, match=r"no sae_id 'blocks\.99"):
        load_registry(SAESource(release=RELEASE, sae_id="blocks.99.hook_resid_pre"))
    with pytest.raises(SAESourceError, match="local Hugging Face cache"):  # not in the cache
        load_registry(SAESource(release=RELEASE, sae_id="blocks.5.hook_resid_pre"))
