"""The SAELens on-disk format: a folder with `cfg.json` and `sae_weights.safetensors`.

Written as SAELens 6 writes it (`SAE.save_model`): cfg.json is `config_to_dict(cfg)`
(d_in, d_sae, dtype, device, apply_b_dec_to_input, normalize_activations,
reshape_activations, architecture, and a `metadata` object holding model_name, hook_name,
... and sae_lens_version); the safetensors file holds exactly the module's state dict
(W_enc, b_enc, W_dec, b_dec for "standard" and "topk", plus `threshold` for "jumprelu"),
which SAELens loads strictly. BatchTopK and Matryoshka BatchTopK SAEs are written as
SAELens writes them: as "jumprelu" with their inference threshold in every `threshold`
entry (metadata keeps trained_architecture and k). "topk" cfgs carry `k` and
`rescale_acts_by_decoder_norm` (false: our decoder rows have equal norms; a SAELens
folder with true has the norms folded in on load, which leaves its function unchanged). So
`SAE.load_from_disk(folder)` in SAELens and Neuronpedia tooling read our folders.

Read side accepts folders SAELens itself wrote, old and new:
  - SAELens >= 6: fields as above;
  - SAELens < 6 (no version, or metadata at top level): `hook_point` / `hook_point_layer`
    / `hook_point_head_index` renamed to `hook_name` / `hook_layer` / `hook_head_index`,
    `normalize_activations` true/false -> "expected_average_only_in"/"none",
    `activation_fn_str`/`activation_fn` must be relu for "standard",
    a `scaling_factor` tensor (finetuning scale) is dropped when all ones, else folded
    into W_dec.
Unknown architectures fail with an error naming the folder and the architecture.
SAELens is not needed (or imported) here.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sae_reasoning.atomic import atomic_path
from sae_reasoning.sae.architectures import build_sae
from sae_reasoning.sae.model import ARCHITECTURE_ALIASES, DTYPES, SAE, SAEConfig, dtype_name

logger = logging.getLogger(__name__)

SAE_CFG_FILENAME = "cfg.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"

_PRE_6_RENAMES = {
    "hook_point": "hook_name",
    "hook_point_layer": "hook_layer",
    "hook_point_head_index": "hook_head_index",
}
_SUPPORTED_NORMALIZATION = ("none", "expected_average_only_in")
# cfg.json `metadata` keys that SAELens itself defines (SAEMetadata / LLM_METADATA_KEYS).
_METADATA_FIELDS = (
    "model_name",
    "hook_name",
    "hook_layer",
    "hook_head_index",
    "context_size",
    "prepend_bos",
    "dataset_path",
    "model_class_name",
    "neuronpedia_id",
)


class UnsupportedSAEError(ValueError):
    """The folder holds an SAE this library cannot run (architecture, normalisation...)."""


def is_sae_folder(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / SAE_CFG_FILENAME).is_file() and (folder / SAE_WEIGHTS_FILENAME).is_file()


def config_to_dict(cfg: SAEConfig) -> dict[str, Any]:
    """cfg.json content in the layout SAELens 6 writes (`SAEConfig.to_dict`)."""
    meta = {k: getattr(cfg, k) for k in _METADATA_FIELDS if getattr(cfg, k) is not None}
    meta.update(cfg.metadata)
    # SAELens reads configs without a >= 6 version as pre-6.0 and re-parses them; this
    # value names the on-disk format version we write, not an installed SAELens.
    meta.setdefault("sae_lens_version", "6.0.0")
    meta.setdefault("sae_lens_training_version", None)
    out = {
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": cfg.device,
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": cfg.normalize_activations,
        "reshape_activations": cfg.reshape_activations,
        "metadata": meta,
        "architecture": cfg.architecture,
    }
    if cfg.architecture == "topk":  # SAELens TopKSAEConfig fields
        out.update(k=cfg.k, rescale_acts_by_decoder_norm=cfg.rescale_acts_by_decoder_norm)
    elif cfg.architecture in ("batchtopk", "matryoshka_batchtopk"):
        out["k"] = cfg.k
    return out


def config_from_dict(d: dict[str, Any]) -> SAEConfig:
    """Inverse of `config_to_dict` (SAELens 6 layout: model/hook fields under `metadata`)."""
    names = {f.name for f in fields(SAEConfig)} - {"metadata"}
    meta = dict(d.get("metadata") or {})
    kwargs = {k: v for k, v in d.items() if k in names}
    for k in _METADATA_FIELDS:
        if k in meta:
            kwargs[k] = meta.pop(k)
    return SAEConfig(**kwargs, metadata=meta)


def saelens_export(sae: SAE) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, cfg.json dict) as SAELens stores `sae` for inference (batchtopk and
    matryoshka: as jumprelu, their trained architecture and k in the metadata)."""
    architecture, state, extra_meta = sae.inference_form()
    cfg = config_to_dict(sae.cfg)
    if architecture != sae.cfg.architecture:
        cfg.pop("k", None)
        cfg["architecture"] = architecture
    cfg["metadata"].update(extra_meta)
    return state, cfg


def _write_atomic(path: Path, write) -> None:
    with atomic_path(
        path, mode=0o644
    ) as tmp:  # safetensors writes 0600; SAE folders are meant to be shared
        write(tmp)


def save_sae(sae: SAE, folder: str | Path) -> tuple[Path, Path]:
    """Write `sae` into `folder` (created) as SAELens does; each file lands atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state, cfg_dict = saelens_export(sae)  # batchtopk / matryoshka: as jumprelu
    weights, cfg = folder / SAE_WEIGHTS_FILENAME, folder / SAE_CFG_FILENAME
    _write_atomic(weights, lambda p: save_file(state, str(p)))
    cfg_dict["device"] = "cpu"  # where the saved tensors live; loaders override it anyway
    _write_atomic(cfg, lambda p: p.write_text(json.dumps(cfg_dict, indent=2)))
    return weights, cfg


def set_model_name(folder: str | Path, model_name: str) -> bool:
    """Rewrite cfg.json's `metadata.model_name` in place (atomically; weights untouched).
    True when it changed. For folders written before model_name named the model's id."""
    path = Path(folder) / SAE_CFG_FILENAME
    raw = json.loads(path.read_text())
    meta = (
        raw.get("metadata") if isinstance(raw.get("metadata"), dict) else raw
    )  # SAELens < 6: flat
    if meta.get("model_name") == model_name:
        return False
    meta["model_name"] = model_name
    _write_atomic(path, lambda p: p.write_text(json.dumps(raw, indent=2)))
    return True


def _major_version(version: Any) -> int | None:
    m = re.match(r"\s*v?(\d+)", str(version)) if version else None
    return int(m.group(1)) if m else None


def normalize_cfg_dict(raw: dict[str, Any], folder: str | Path = "?") -> dict[str, Any]:
    """Any SAELens cfg.json (pre-6 or 6+) -> the SAELens 6 layout `config_from_dict` reads."""
    meta = raw.get("metadata") or raw.get("meta") or {}
    version = raw.get("sae_lens_version") or meta.get("sae_lens_version")
    major = _major_version(version)
    if major is not None and major >= 6:
        cfg = {k: v for k, v in raw.items() if k not in ("meta",)}
        cfg["metadata"] = dict(meta)
    else:
        # Pre-6 layout: everything at top level, old key names.
        flat = {
            _PRE_6_RENAMES.get(k, k): v for k, v in raw.items() if k not in ("metadata", "meta")
        }
        flat.update({_PRE_6_RENAMES.get(k, k): v for k, v in meta.items()})
        activation = (
            flat.pop("activation_fn_str", None) or flat.pop("activation_fn", None) or "relu"
        )
        flat.setdefault("architecture", "topk" if activation == "topk" else "standard")
        if flat["architecture"] == "topk" and "k" not in flat:
            flat["k"] = (flat.get("activation_fn_kwargs") or {}).get("k")
        if flat["architecture"] == "standard" and activation != "relu":
            raise UnsupportedSAEError(
                f"SAE folder {folder}: architecture 'standard' with activation {activation!r} "
                "is not supported (only relu)"
            )
        top = {
            "d_in",
            "d_sae",
            "dtype",
            "device",
            "apply_b_dec_to_input",
            "normalize_activations",
            "reshape_activations",
            "architecture",
            "finetuning_scaling_factor",
            "k",
            "rescale_acts_by_decoder_norm",
        }
        cfg = {k: v for k, v in flat.items() if k in top}
        cfg["metadata"] = {k: v for k, v in flat.items() if k not in top}
    # Defaults SAELens applies (handle_config_defaulting / handle_pre_6_0_config).
    cfg.setdefault("architecture", "standard")
    cfg.setdefault("apply_b_dec_to_input", True)
    cfg.setdefault("dtype", "float32")
    norm = cfg.get("normalize_activations")
    if isinstance(norm, bool):
        norm = "expected_average_only_in" if norm else "none"
    cfg["normalize_activations"] = norm or "none"
    hook = cfg["metadata"].get("hook_name") or ""
    cfg.setdefault("reshape_activations", "hook_z" if "hook_z" in hook else "none")
    return cfg


def read_cfg(folder: str | Path) -> dict[str, Any]:
    """cfg.json of an SAE folder, normalised to the SAELens 6 layout."""
    folder = Path(folder)
    path = folder / SAE_CFG_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no {SAE_CFG_FILENAME} in SAE folder {folder}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    return normalize_cfg_dict(raw, folder)


def _check_supported(cfg_dict: dict[str, Any], folder: Path) -> None:
    arch = str(cfg_dict["architecture"]).lower()
    if arch not in ARCHITECTURE_ALIASES:
        raise UnsupportedSAEError(
            f"SAE folder {folder}: architecture {cfg_dict['architecture']!r} is not supported "
            f"(implemented: {sorted(set(ARCHITECTURE_ALIASES.values()))})"
        )
    norm = cfg_dict["normalize_activations"]
    if norm not in _SUPPORTED_NORMALIZATION:
        raise UnsupportedSAEError(
            f"SAE folder {folder}: normalize_activations={norm!r} is not supported "
            f"(supported: {list(_SUPPORTED_NORMALIZATION)})"
        )
    if cfg_dict["reshape_activations"] != "none":
        raise UnsupportedSAEError(
            f"SAE folder {folder}: reshape_activations={cfg_dict['reshape_activations']!r} "
            "(hook_z SAEs) is not supported"
        )


def _read_weights(
    folder: Path, dtype: torch.dtype, finetuning_scaling: bool
) -> dict[str, torch.Tensor]:
    """The safetensors state dict in `dtype`, a SAELens < 6 finetuning scale folded in."""
    weights = folder / SAE_WEIGHTS_FILENAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {SAE_WEIGHTS_FILENAME} in SAE folder {folder}")
    with safe_open(str(weights), framework="pt", device="cpu") as f:
        state = {k: f.get_tensor(k).to(dtype) for k in f.keys()}
    if "scaling_factor" in state:  # SAELens < 6 finetuning scale, multiplies f in decode
        scale = state.pop("scaling_factor")
        if not torch.allclose(scale, torch.ones_like(scale)):
            if not finetuning_scaling:
                raise ValueError(
                    f"SAE folder {folder}: scaling_factor present but "
                    "finetuning_scaling_factor is false"
                )
            state["W_dec"] = state["W_dec"] * scale[:, None]
    return state


def _check_state(sae: SAE, state: dict[str, torch.Tensor], folder: Path) -> None:
    """The names and shapes `sae` expects (SAELens loads strictly too)."""
    cfg = sae.cfg
    expected = set(sae.state_dict())
    if "topk_threshold_steps" in expected:  # a training counter: folders need not carry it
        state.setdefault("topk_threshold_steps", sae.topk_threshold_steps)
    if set(state) != expected:
        raise ValueError(
            f"SAE folder {folder}: {SAE_WEIGHTS_FILENAME} holds {sorted(state)}, "
            f"expected {sorted(expected)} for architecture {cfg.architecture!r}"
        )
    for k, v in sae.state_dict().items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(
                f"SAE folder {folder}: {k} has shape {tuple(state[k].shape)}, expected "
                f"{tuple(v.shape)} from cfg.json (d_in={cfg.d_in}, d_sae={cfg.d_sae})"
            )


def _fold_decoder_norms(state: dict[str, torch.Tensor], cfg: SAEConfig) -> None:
    """SAELens topk with rescaling: pre * ||W_dec[i]|| selects, f / ||W_dec[i]|| decodes.
    Folding the norms into W_enc, b_enc and W_dec gives the same function without it."""
    norm = state["W_dec"].norm(dim=1)
    state["W_enc"], state["b_enc"] = state["W_enc"] * norm, state["b_enc"] * norm
    state["W_dec"] = state["W_dec"] / norm[:, None]
    cfg.rescale_acts_by_decoder_norm = False


def load_sae(
    folder: str | Path, device: str | torch.device = "cpu", dtype: str | None = None
) -> SAE:
    """Load an SAE folder in the SAELens layout (written by us or by SAELens).

    The returned SAE works in raw activation units: an `expected_average_only_in` SAE whose
    cfg records `norm_scaling_factor` has it folded in; without it a warning says that
    inputs must be scaled by the caller (SAELens behaves the same way)."""
    folder = Path(folder)
    cfg_dict = read_cfg(folder)
    _check_supported(cfg_dict, folder)
    finetuning_scaling = cfg_dict.pop("finetuning_scaling_factor", False)
    cfg_dict["dtype"] = dtype_name(dtype or cfg_dict.get("dtype") or "float32")
    cfg_dict["device"] = str(device)
    cfg = config_from_dict(cfg_dict)
    state = _read_weights(folder, DTYPES[cfg.dtype], finetuning_scaling)
    sae = build_sae(cfg)
    _check_state(sae, state, folder)
    if cfg.architecture == "topk" and cfg.rescale_acts_by_decoder_norm:
        _fold_decoder_norms(state, cfg)
    sae.load_state_dict(state)
    sae.to(device)

    if cfg.normalize_activations == "expected_average_only_in":
        factor = cfg.metadata.get("norm_scaling_factor")
        if factor is not None:
            sae.fold_activation_norm_scaling_factor(float(factor))
        else:
            logger.warning(
                "SAE folder %s was trained with normalize_activations='expected_average_only_in' "
                "and records no norm_scaling_factor: scale inputs yourself before encode()",
                folder,
            )
    return sae
