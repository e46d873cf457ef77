"""Kedro-level: `kedro run --pipeline=phase4` where one hook point's SAE is an SAELens registry
entry (`sae_source: {release, sae_id}`), loaded offline from a Hugging Face cache built here.
The tiny GPT-2 has gpt2-small's width (768): the registry fixes d_in."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, GPT2Config

from tests.sae.hf_cache import COMMIT, D_IN, RELEASE, write_registry_sae
from tests.tiny import make_tokenizer
from tests.tiny_project import copy_project, kedro, make_tiny_env

pytestmark = pytest.mark.slow
SAE_ID = "blocks.2.hook_resid_pre"  # = the output of block 1
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def gpt2_768(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2_768")
    tok = make_tokenizer()
    cfg = GPT2Config(
        n_layer=3,
        n_embd=D_IN,
        n_head=12,
        n_positions=1024,
        vocab_size=len(tok),
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_phase4_with_a_registry_sae_by_config_alone(tmp_path, gpt2_768, monkeypatch):
    cache = tmp_path / "hub"
    write_registry_sae(cache, SAE_ID)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # the kedro subprocess inherits it
    project = copy_project(tmp_path / "project")
    source = {SAE_ID: {"release": RELEASE, "sae_id": SAE_ID}}
    make_tiny_env(
        project,
        {"gpt2": gpt2_768},
        models={"gpt2_768": ("gpt2", [1])},
        overrides={"models": {"gpt2_768": {"sae_source": source}}},
    )
    run = kedro(project, "--pipeline=phase4", "--env=tiny")
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-6000:]
    assert "training SAE" not in log and "loading pretrained SAE" in log

    folder = project / "data/06_models/sae/gpt2_768" / HOOK
    summary = json.loads((folder / "training_summary.json").read_text())
    src = summary["source"]
    assert (src["kind"], src["release"], src["sae_id"], src["commit"]) == (
        "registry",
        RELEASE,
        SAE_ID,
        COMMIT,
    )
    assert src["d_in"] == D_IN and set(src["files"]) >= {"cfg.json", "sae_weights.safetensors"}
    out = project / "data/08_reporting"
    causal = json.loads((out / "causal_test_results.json").read_text())
    assert causal["gpt2_768"]["hook_points"][HOOK]["splice_identity_max_abs_logprob_change"] < 1e-4
    report = (out / "PHASE4_REPORT.md").read_text()
    assert f"(pretrained: {RELEASE}/{SAE_ID})" in report

    # A misconfigured source stops the run before capture, naming model, hook and source.
    write_registry_sae(cache, "blocks.3.hook_resid_pre")
    bad = project / "conf/tiny/parameters.yml"
    bad.write_text(
        bad.read_text().replace(
            "sae_id: blocks.2.hook_resid_pre", "sae_id: blocks.3.hook_resid_pre"
        )
    )
    run = kedro(project, "--pipeline=phase4", "--env=tiny")
    log = run.stdout + run.stderr
    assert run.returncode != 0 and "sae_source check failed" in log
    assert "gpt2_768" in log and "trained at blocks.3.hook_resid_pre" in log
    assert "not blocks.1.hook_resid_post" in log
