import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_reasoning.sae import SAEConfig, UnsupportedSAEError, build_sae, load_sae, save_sae


def trained_like_sae(d_in=6, d_sae=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    sae = build_sae(
        SAEConfig(
            d_in=d_in,
            d_sae=d_sae,
            model_name="toy",
            hook_name="blocks.2.hook_resid_post",
            hook_layer=2,
            context_size=128,
            metadata={"norm_scaling_factor": 0.5},
        )
    )
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return sae


def test_round_trip_identical_weights_and_outputs(tmp_path):
    sae = trained_like_sae()
    save_sae(sae, tmp_path / "s")
    back = load_sae(tmp_path / "s")
    for k, v in sae.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    x = torch.randn(5, 6)
    assert torch.equal(back(x), sae(x))
    assert back.cfg.hook_name == "blocks.2.hook_resid_post" and back.cfg.hook_layer == 2
    assert back.cfg.model_name == "toy" and back.cfg.context_size == 128
    assert back.cfg.metadata["norm_scaling_factor"] == 0.5


def test_cfg_json_has_the_saelens_6_layout(tmp_path):
    save_sae(trained_like_sae(), tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    # What SAELens 6 SAEConfig.from_dict / handle_config_defaulting need.
    assert cfg["architecture"] == "standard"
    assert (cfg["d_in"], cfg["d_sae"]) == (6, 10)
    assert cfg["dtype"] == "float32" and cfg["device"] == "cpu"
    assert cfg["apply_b_dec_to_input"] is True
    assert cfg["normalize_activations"] == "none"
    assert cfg["reshape_activations"] == "none"
    meta = cfg["metadata"]
    assert meta["hook_name"] == "blocks.2.hook_resid_post" and meta["model_name"] == "toy"
    assert int(meta["sae_lens_version"].split(".")[0]) >= 6  # else SAELens re-parses it as pre-6
    weights = load_file(str(tmp_path / "s" / "sae_weights.safetensors"))
    assert set(weights) == {"W_enc", "b_enc", "W_dec", "b_dec"}  # SAELens loads strictly
    assert weights["W_enc"].shape == (6, 10) and weights["W_dec"].shape == (10, 6)


def _write_saelens_folder(folder, cfg, tensors):
    """What SAELens's SAE.save_model does: json.dump(cfg.to_dict()) + save_file(state_dict)."""
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "sae_weights.safetensors"))


def _tensors(d_in, d_sae, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=g),
        "b_enc": torch.randn(d_sae, generator=g),
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_dec": torch.randn(d_in, generator=g),
    }


def test_loads_a_folder_written_by_saelens_6(tmp_path):
    cfg = {  # StandardSAEConfig(...).to_dict() as SAELens 6.x writes it
        "d_in": 4,
        "d_sae": 8,
        "dtype": "float32",
        "device": "cuda",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.5.1",
            "sae_lens_training_version": "6.5.1",
            "model_name": "gpt2",
            "hook_name": "blocks.8.hook_resid_pre",
            "hook_head_index": None,
            "context_size": 128,
            "prepend_bos": True,
            "dataset_path": "apollo-research/Skylion007-openwebtext-tokenizer-gpt2",
            "model_from_pretrained_kwargs": {"center_writing_weights": False},
        },
        "architecture": "standard",
    }
    t = _tensors(4, 8)
    _write_saelens_folder(tmp_path / "s", cfg, t)
    sae = load_sae(tmp_path / "s")  # device comes from the caller, not cfg.json
    assert sae.device.type == "cpu" and sae.cfg.hook_name == "blocks.8.hook_resid_pre"
    x = torch.randn(3, 4)
    expected = torch.relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) @ t["W_dec"] + t["b_dec"]
    torch.testing.assert_close(sae(x), expected)
    assert sae.cfg.metadata["model_from_pretrained_kwargs"] == {"center_writing_weights": False}


def test_loads_a_pre_6_saelens_folder(tmp_path):
    cfg = {  # SAELens 3-5 layout: flat keys, hook_point names, bool normalisation
        "architecture": "standard",
        "d_in": 4,
        "d_sae": 8,
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": False,
        "finetuning_scaling_factor": False,
        "context_size": 128,
        "model_name": "gpt2-small",
        "hook_point": "blocks.0.hook_resid_pre",
        "hook_point_layer": 0,
        "hook_point_head_index": None,
        "prepend_bos": True,
        "dataset_path": "Skylion007/openwebtext",
        "normalize_activations": False,
        "dtype": "torch.float32",
        "device": "cuda",
        "sae_lens_training_version": "3.1.0",
    }
    t = _tensors(4, 8)
    t["scaling_factor"] = torch.ones(8)  # older files carried an all-ones finetuning scale
    _write_saelens_folder(tmp_path / "old", cfg, t)
    sae = load_sae(tmp_path / "old")
    assert sae.cfg.hook_name == "blocks.0.hook_resid_pre" and sae.cfg.hook_layer == 0
    assert sae.cfg.normalize_activations == "none" and sae.cfg.apply_b_dec_to_input is False
    x = torch.randn(3, 4)
    expected = torch.relu(x @ t["W_enc"] + t["b_enc"]) @ t["W_dec"] + t["b_dec"]
    torch.testing.assert_close(sae(x), expected)


def test_unknown_architecture_names_folder_and_architecture(tmp_path):
    cfg = {
        "d_in": 4,
        "d_sae": 8,
        "architecture": "gated",
        "dtype": "float32",
        "metadata": {"sae_lens_version": "6.0.0", "hook_name": "blocks.1.hook_resid_post"},
    }
    _write_saelens_folder(tmp_path / "gated_sae", cfg, {**_tensors(4, 8), "b_gate": torch.zeros(8)})
    with pytest.raises(UnsupportedSAEError, match=r"gated_sae.*'gated'"):
        load_sae(tmp_path / "gated_sae")


def test_saelens_jumprelu_folder_loads(tmp_path):
    """A Gemma Scope-style SAELens 6 jumprelu folder: f = relu(pre) * (pre > threshold)."""
    cfg = {
        "d_in": 4,
        "d_sae": 8,
        "architecture": "jumprelu",
        "dtype": "float32",
        "metadata": {"sae_lens_version": "6.54.12", "hook_name": "blocks.1.hook_resid_post"},
    }
    t = {**_tensors(4, 8), "threshold": torch.linspace(0, 1, 8)}
    _write_saelens_folder(tmp_path / "gemmascope", cfg, t)
    sae = load_sae(tmp_path / "gemmascope")
    x = torch.randn(6, 4)
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    torch.testing.assert_close(sae.encode(x), torch.relu(pre) * (pre > t["threshold"]))


def test_saelens_topk_folder_with_decoder_norm_rescaling_loads(tmp_path):
    cfg = {
        "d_in": 4,
        "d_sae": 8,
        "architecture": "topk",
        "k": 3,
        "rescale_acts_by_decoder_norm": True,
        "metadata": {"sae_lens_version": "6.54.12"},
    }
    t = _tensors(4, 8)
    t["W_dec"] = t["W_dec"] * torch.linspace(0.5, 2.0, 8)[:, None]
    _write_saelens_folder(tmp_path / "topk", cfg, t)
    sae = load_sae(tmp_path / "topk")
    assert sae.cfg.k == 3
    x = torch.randn(6, 4)
    # SAELens TopKSAE.encode/decode with rescale_acts_by_decoder_norm=True
    norm = t["W_dec"].norm(dim=1)
    pre = ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) * norm
    top = pre.topk(3, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    torch.testing.assert_close(sae(x), (f / norm) @ t["W_dec"] + t["b_dec"])


def test_unsupported_normalisation_is_a_clear_error(tmp_path):
    cfg = {
        "d_in": 4,
        "d_sae": 8,
        "architecture": "standard",
        "normalize_activations": "layer_norm",
        "metadata": {"sae_lens_version": "6.0.0"},
    }
    _write_saelens_folder(tmp_path / "ln", cfg, _tensors(4, 8))
    with pytest.raises(UnsupportedSAEError, match="layer_norm"):
        load_sae(tmp_path / "ln")


def test_weights_that_do_not_match_cfg_are_a_clear_error(tmp_path):
    cfg = {
        "d_in": 4,
        "d_sae": 8,
        "architecture": "standard",
        "metadata": {"sae_lens_version": "6.0.0"},
    }
    _write_saelens_folder(tmp_path / "bad", cfg, _tensors(4, 9))
    with pytest.raises(ValueError, match=r"bad.*W_enc has shape \(4, 9\)"):
        load_sae(tmp_path / "bad")
