"""A Hugging Face hub cache built on disk (the hub's layout), holding one SAE of SAELens's
registry as its repo stores it, so SAELens loads `release`/`sae_id` offline."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

RELEASE = "gpt2-small-res-jb"  # SAELens 6.54.12 pretrained_saes.yaml
REPO_ID = "jbloom/GPT2-Small-SAEs-Reformatted"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
D_IN = 768  # gpt2-small's width: the registry fixes it
D_SAE = 48  # read from cfg.json by the loader: small for the test


def write_registry_sae(cache: Path, sae_id: str = "blocks.2.hook_resid_pre", seed: int = 0) -> Path:
    """models--jbloom--GPT2-Small-SAEs-Reformatted/{refs/main, snapshots/<commit>/<sae_id>/...}
    with a pre-6 SAELens cfg.json (as that repo has) and random weights; returns the folder."""
    repo = cache / ("models--" + REPO_ID.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    folder = repo / "snapshots" / COMMIT / sae_id
    folder.mkdir(parents=True, exist_ok=True)
    layer = int(sae_id.split(".")[1])
    cfg = {
        "model_name": "gpt2-small",
        "hook_point": sae_id,
        "hook_point_layer": layer,
        "hook_point_head_index": None,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "torch.float32",
        "device": "cuda",
        "dataset_path": "Skylion007/openwebtext",
        "context_size": 128,
        "normalize_activations": False,
        "apply_b_dec_to_input": True,
        "l1_coefficient": 8e-05,
        "lr": 0.0004,
        "expansion_factor": 32,
        "sae_lens_training_version": None,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(D_SAE, D_IN, generator=g)
    save_file(
        {
            "W_enc": w_dec.T.contiguous() * 0.05,
            "b_enc": torch.randn(D_SAE, generator=g) * 0.1,
            "W_dec": w_dec / w_dec.norm(dim=1, keepdim=True),
            "b_dec": torch.randn(D_IN, generator=g) * 0.1,
        },
        str(folder / "sae_weights.safetensors"),
    )
    save_file({"sparsity": torch.full((D_SAE,), -2.0)}, str(folder / "sparsity.safetensors"))
    return folder
