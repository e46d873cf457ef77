"""Pretrained SAEs: a local SAELens-format folder or an SAELens registry entry, per hook point.

`models.<namespace>.sae_source` maps a layer (int) or a hook point to

    {path: <folder with cfg.json + sae_weights.safetensors>}      a local SAELens folder
    {release: gpt2-small-res-jb, sae_id: blocks.8.hook_resid_pre} SAELens's pretrained_saes.yaml

A registry entry is loaded by SAELens itself (`SAE.from_pretrained`, from the local Hugging
Face cache when HF_HUB_OFFLINE=1) and converted to our SAE class; the conversion is checked
on random inputs against SAELens's own encode/decode before it is used. SAELens is
imported only here, inside the functions that load (it takes ~10 s to import).

`PretrainedSAEJob` has the interface of `SAETrainingJob` (hook_point, fingerprint, inputs,
reuse_reason, make_sae, run): the sae_training node runs it like a training job, so the
hook point skips training and the SAE folder gets a `source` block (provenance) in
training_summary.json. A later run reuses the folder while the source is unchanged.

Hook names: SAELens SAEs carry TransformerLens names; `blocks.L.hook_resid_pre` is used
at `blocks.{L-1}.hook_resid_post` (the same tensor, models/hooks.py). SAEs trained on a
TransformerLens model with `center_writing_weights` saw the residual stream with its mean
over d_model removed: that centring is folded into W_enc/b_enc, so the codes equal
SAELens's on TransformerLens's residual stream. The reconstruction then lacks the per-token
mean, which every LayerNorm the model applies removes anyway (FVU counts it).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from sae_reasoning.models.hooks import HookPointError, canonical_hook_point, hook_point
from sae_reasoning.sae.model import SAE
from sae_reasoning.sae.sae_folder import (
    SUMMARY_FILENAME,
    load_sae_folder,
    read_summary,
    recover_sae_folder,
    store_sae_folder,
)
from sae_reasoning.sae.saelens_format import (
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    load_sae,
    read_cfg,
)
from sae_reasoning.sae.train import fingerprint_of

logger = logging.getLogger(__name__)

CONVERTER_VERSION = 1  # bump when the conversion of a loaded SAE changes
CHECK_TOLERANCE = 1e-4  # relative, float32: our encode/decode vs SAELens's on random inputs


class SAESourceError(ValueError):
    """An `sae_source` entry that cannot be used (names the model, hook and entry)."""


@dataclass(frozen=True)
class SAESource:
    """Where one hook point's SAE comes from: `path`, or `release` + `sae_id`."""

    path: str | None = None
    release: str | None = None
    sae_id: str | None = None

    @classmethod
    def from_params(cls, value: Any, where: str) -> SAESource:
        if not isinstance(value, dict):
            raise SAESourceError(
                f"{where}: expected {{path: ...}} or {{release: ..., sae_id: ...}}, got {value!r}"
            )
        unknown = set(value) - {"path", "release", "sae_id"}
        src = cls(
            **{k: (str(v) if v is not None else None) for k, v in value.items() if k not in unknown}
        )
        if (
            unknown
            or bool(src.path) == bool(src.release or src.sae_id)
            or (src.release and not src.sae_id)
            or (src.sae_id and not src.release)
        ):
            raise SAESourceError(
                f"{where}: {value!r} must give either `path` (a local SAELens folder) "
                "or both `release` and `sae_id` (an SAELens registry entry)"
            )
        return src

    @property
    def kind(self) -> str:
        return "path" if self.path else "registry"

    @property
    def label(self) -> str:
        return self.path if self.path else f"{self.release}/{self.sae_id}"

    def as_dict(self) -> dict[str, str]:
        return {
            k: v
            for k, v in (("path", self.path), ("release", self.release), ("sae_id", self.sae_id))
            if v
        }


def parse_sae_sources(
    model_params: dict[str, Any], hook_points: list[str], model: str = "model"
) -> dict[str, SAESource]:
    """{hook point (project name) -> SAESource} from `models.<model>.sae_source`. Keys are
    layers (the block output, as `layers`) or hook names (resid_pre/resid_post); each must
    be one of the configured hook points, so capture records the activations it needs."""
    raw = model_params.get("sae_source") or {}
    if not isinstance(raw, dict):
        raise SAESourceError(
            f"models.{model}.sae_source: expected a mapping of layer or hook "
            f"point to a source, got {raw!r}"
        )
    out: dict[str, SAESource] = {}
    for key, value in raw.items():
        where = f"models.{model}.sae_source[{key!r}]"
        try:
            hook = (
                hook_point(int(key))
                if isinstance(key, int) or str(key).isdigit()
                else canonical_hook_point(str(key))
            )
        except HookPointError as exc:
            raise SAESourceError(f"{where}: {exc}") from None
        if hook not in hook_points:
            raise SAESourceError(
                f"{where} is used at {hook}, which is not one of model {model!r}'s "
                f"hook points {hook_points}; add its layer to models.{model}.layers"
            )
        if hook in out:
            raise SAESourceError(f"{where}: {hook} already has a source ({out[hook].label})")
        out[hook] = SAESource.from_params(value, where)
    return out


def sae_lens_version() -> str | None:
    try:
        return metadata.version("sae-lens")
    except metadata.PackageNotFoundError:
        return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_hashes(root: Path) -> dict[str, str]:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {
        (p.name if root.is_file() else p.relative_to(root).as_posix()): _sha256(p) for p in files
    }


def _describe(sae: SAE) -> dict[str, Any]:
    c = sae.cfg
    return {
        "architecture": c.architecture,
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "hook_name": c.hook_name,
        "model_name": c.model_name,
        "normalize_activations": c.normalize_activations,
        "norm_scaling_factor": c.norm_scaling_factor,
        "dtype": c.dtype,
    }


# -- loading ---------------------------------------------------------------------------


def load_local(source: SAESource) -> tuple[SAE, dict[str, Any]]:
    folder = Path(source.path).expanduser()
    if not (folder / SAE_CFG_FILENAME).is_file() or not (folder / SAE_WEIGHTS_FILENAME).is_file():
        raise SAESourceError(
            f"sae_source path {folder}: not an SAELens folder (needs "
            f"{SAE_CFG_FILENAME} and {SAE_WEIGHTS_FILENAME})"
        )
    sae = load_sae(folder)
    cfg = read_cfg(folder)
    provenance = {
        "kind": "path",
        "path": str(folder.resolve()),
        "files": _file_hashes(folder),
        "sae_lens_version": (cfg.get("metadata") or {}).get("sae_lens_version"),
        **_describe(sae),
    }
    return sae, provenance


def hf_snapshot(repo_id: str, folder: str) -> dict[str, Any]:
    """The cached snapshot SAELens read: commit hash and sha256 of the SAE's files in it."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    repo = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    ref = repo / "refs" / "main"
    commit = ref.read_text().strip() if ref.is_file() else None
    snap = repo / "snapshots" / commit / folder if commit else None
    files = _file_hashes(snap) if snap is not None and snap.exists() else {}
    return {"repo_id": repo_id, "repo_folder": folder, "commit": commit, "files": files}


def load_registry(source: SAESource) -> tuple[SAE, dict[str, Any]]:
    """SAELens loads the registry entry (offline: from the HF cache); converted and checked."""
    from sae_lens import SAE as SAELensSAE
    from sae_lens.loading.pretrained_saes_directory import (
        get_pretrained_saes_directory,
        get_repo_id_and_folder_name,
    )

    entry = get_pretrained_saes_directory().get(source.release)
    if entry is None:
        raise SAESourceError(
            f"sae_source release {source.release!r} is not in SAELens "
            f"{sae_lens_version()}'s pretrained_saes.yaml"
        )
    if source.sae_id not in entry.saes_map:
        raise SAESourceError(
            f"sae_source {source.label}: no sae_id {source.sae_id!r} in release "
            f"{source.release!r} (e.g. {sorted(entry.saes_map)[:5]})"
        )
    repo_id, repo_folder = get_repo_id_and_folder_name(source.release, source.sae_id)
    try:
        theirs = SAELensSAE.from_pretrained(source.release, source.sae_id, device="cpu")
    except Exception as exc:  # noqa: BLE001 - hub errors have many types; say what to do
        raise SAESourceError(
            f"SAELens could not load {source.label} (repo {repo_id}, folder {repo_folder}): {exc}. "
            "Offline it must be in the local Hugging Face cache (HF_HUB_CACHE); download it "
            "once with `huggingface-cli download` where the hub is reachable."
        ) from exc
    overrides = dict((entry.config_overrides or {}).get("model_from_pretrained_kwargs") or {})
    centred = bool(overrides.get("center_writing_weights"))
    ours = from_saelens(theirs, centred)
    check_same_function(ours, theirs, centred, source.label)
    provenance = {
        "kind": "registry",
        "release": source.release,
        "sae_id": source.sae_id,
        "sae_lens_model": entry.model,
        **hf_snapshot(repo_id, repo_folder),
        "sae_lens_version": sae_lens_version(),
        "model_from_pretrained_kwargs": overrides,
        "adjustments": ["center_writing_weights: residual centring folded into W_enc, b_enc"]
        if centred
        else [],
        **_describe(ours),
    }
    return ours, provenance


def from_saelens(theirs, centred: bool = False) -> SAE:
    """An SAELens SAE object -> our SAE, through the SAELens file format (saelens_format.py
    reads every architecture we run); `centred` folds mean-centring of the input in."""
    with tempfile.TemporaryDirectory(prefix="sae-convert-") as tmp:
        theirs.save_model(tmp)
        ours = load_sae(tmp)
    if centred:
        fold_input_centring(ours)
    return ours


@torch.no_grad()
def fold_input_centring(sae: SAE) -> None:
    """encode(x) becomes the old encode(x - mean(x)): W_enc <- P W_enc with P = I - 11^T/d,
    and b_enc absorbs the part of b_dec that P would have removed."""
    if sae.cfg.apply_b_dec_to_input:
        sae.b_enc -= sae.b_dec.mean() * sae.W_enc.sum(dim=0)
    sae.W_enc -= sae.W_enc.mean(dim=0, keepdim=True)


@torch.no_grad()
def check_same_function(ours: SAE, theirs, centred: bool, label: str, n: int = 64) -> float:
    """Max relative difference of encode and decode(encode) between our SAE and SAELens's on
    random inputs at the SAE's own scale; SAESourceError above CHECK_TOLERANCE."""
    g = torch.Generator().manual_seed(0)
    scale = float(theirs.b_dec.detach().float().norm()) / ours.d_in**0.5 + 1.0
    x = torch.randn(n, ours.d_in, generator=g) * scale * 3
    x_theirs = x - x.mean(-1, keepdim=True) if centred else x
    dtype = theirs.W_enc.dtype
    pairs = {
        "encode": (ours.encode(x.to(ours.dtype)), theirs.encode(x_theirs.to(dtype))),
        "decode": (
            ours.decode(ours.encode(x.to(ours.dtype))),
            theirs.decode(theirs.encode(x_theirs.to(dtype))),
        ),
    }
    worst = 0.0
    for what, (a, b) in pairs.items():
        a, b = a.double(), b.double()
        err = float((a - b).abs().max() / (b.abs().max() + 1e-12))
        worst = max(worst, err)
        if err > CHECK_TOLERANCE:
            raise SAESourceError(
                f"{label}: our conversion's {what} differs from SAELens's by {err:.2g} "
                f"(relative); architecture {ours.cfg.architecture!r} is not converted exactly"
            )
    return worst


def source_config(source: SAESource) -> dict[str, Any]:
    """d_in and hook_name of a source without its weights (for the pre-flight check). A
    registry entry's config is read by SAELens from the HF cache (imports sae_lens)."""
    if source.path:
        folder = Path(source.path).expanduser()
        try:
            cfg = read_cfg(folder)
        except (FileNotFoundError, ValueError) as exc:
            raise SAESourceError(f"sae_source path {folder}: {exc}") from exc
        return {"d_in": cfg.get("d_in"), "hook_name": (cfg.get("metadata") or {}).get("hook_name")}
    from sae_lens.loading.pretrained_sae_loaders import load_sae_config_from_huggingface

    try:
        cfg = load_sae_config_from_huggingface(source.release, source.sae_id)
    except Exception as exc:  # noqa: BLE001
        raise SAESourceError(
            f"sae_source {source.label}: SAELens cannot read its config ({exc}); "
            "offline it must be in the local Hugging Face cache"
        ) from exc
    meta = cfg.get("metadata") or {}
    return {"d_in": cfg.get("d_in"), "hook_name": cfg.get("hook_name") or meta.get("hook_name")}


def load_source(source: SAESource) -> tuple[SAE, dict[str, Any]]:
    return load_local(source) if source.path else load_registry(source)


def check_fits(
    sae_hook: str | None, d_in: int | None, hook: str, d_model: int | None, where: str
) -> None:
    """The SAE's own hook name must be the tensor at `hook`, its d_in the model's width."""
    if sae_hook:
        try:
            same = canonical_hook_point(sae_hook) == hook
        except HookPointError as exc:
            raise SAESourceError(
                f"{where}: the SAE's hook {sae_hook!r} cannot be served: {exc}"
            ) from None
        if not same:
            raise SAESourceError(
                f"{where}: the SAE was trained at {sae_hook}, which is "
                f"{canonical_hook_point(sae_hook)}, not {hook}"
            )
    if d_model is not None and d_in is not None and int(d_in) != int(d_model):
        raise SAESourceError(
            f"{where}: the SAE's d_in is {d_in} but the model's d_model is {d_model}"
        )


# -- the job the sae_training node runs ---------------------------------------------------------


@dataclass
class PretrainedSAEJob:
    """A pretrained SAE for one hook point, loaded by the sae_training node."""

    hook_point: str
    source: SAESource
    d_model: int | None = None  # the model's width at the hook (from the activations)
    model: str = "model"
    inputs: dict = field(init=False, repr=False)
    fingerprint: str = field(init=False)

    def __post_init__(self):
        src: dict[str, Any] = self.source.as_dict()
        if self.source.path:  # a local folder may be rewritten in place: hash its files
            folder = Path(self.source.path).expanduser()
            src["files"] = _file_hashes(folder) if folder.is_dir() else {}
        else:
            src["sae_lens_version"] = sae_lens_version()
        self.inputs = {
            "kind": "pretrained",
            "converter_version": CONVERTER_VERSION,
            "hook_point": self.hook_point,
            "source": src,
        }
        self.fingerprint = fingerprint_of(self.inputs)

    @property
    def where(self) -> str:
        return f"model {self.model!r}, {self.hook_point}, sae_source {self.source.label}"

    def reuse_reason(self, folder: str | Path) -> str | None:
        folder = Path(folder)
        summary = read_summary(folder)
        if summary is None or not (folder / SAE_WEIGHTS_FILENAME).is_file():
            return f"no SAE with {SUMMARY_FILENAME} in {folder}"
        if summary.get("fingerprint") == self.fingerprint:
            return None
        old = (summary.get("fingerprint_inputs") or {}).get("source")
        return (
            f"sae_source changed ({old} -> {self.inputs['source']})"
            if old
            else "the folder holds an SAE trained here"
        )

    def make_sae(self, folder: str | Path) -> SAE:
        """The SAE in `folder` when it came from this source, else the source's SAE (checked
        against the hook point and width) with its provenance summary, not yet written."""
        folder = Path(folder)
        recover_sae_folder(folder)
        if self.reuse_reason(folder) is None:
            logger.info("reusing pretrained SAE %s (%s)", folder, self.source.label)
            sae = load_sae_folder(folder)
            check_fits(None, sae.d_in, self.hook_point, self.d_model, self.where)
            return sae
        logger.info(
            "loading pretrained SAE %s for %s into %s", self.source.label, self.hook_point, folder
        )
        sae, provenance = load_source(self.source)
        check_fits(sae.cfg.hook_name, sae.d_in, self.hook_point, self.d_model, self.where)
        sae.training_summary = {
            "finished": True,
            "kind": "pretrained",
            "fingerprint": self.fingerprint,
            "fingerprint_inputs": self.inputs,
            "source": {**provenance, "hook_point": self.hook_point},
        }
        return sae

    def run(self, folder: str | Path) -> SAE:
        """make_sae, then write the folder (unless it holds that SAE already)."""
        sae = self.make_sae(folder)
        store_sae_folder(folder, sae)
        return sae
