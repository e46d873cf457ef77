"""`ModelDataset`: a catalog entry for a language model (HF id, local folder or GGUF file).

Loading returns a lazy `ModelHandle`: weights load only in the node (and process, and
device) that uses them; the pre-flight check and the runner read just the config.
"""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset, DatasetError

from sae_reasoning.datasets.previews import TablePreview, records_preview
from sae_reasoning.models.loading import ModelHandle, ModelSpec


class ModelDataset(AbstractDataset[None, ModelHandle]):
    def __init__(
        self,
        *,
        name: str,
        pretrained_model_name_or_path: str,
        gguf_file: str | None = None,
        revision: str | None = None,
        dtype: str = "float32",
        trust_remote_code: bool = False,
        converted_cache: str | None = "data/06_models/converted",
        load_kwargs: dict | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self._spec = ModelSpec(
            name=name,
            pretrained_model_name_or_path=pretrained_model_name_or_path,
            gguf_file=gguf_file,
            revision=revision,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            converted_cache=converted_cache,
            load_kwargs=dict(load_kwargs or {}),
        )
        self.metadata = metadata

    def load(self) -> ModelHandle:
        return ModelHandle(self._spec)

    def save(self, data: None) -> None:
        raise DatasetError(f"model {self._spec.name!r} is read-only in the catalog")

    def _describe(self) -> dict[str, Any]:
        return {
            "name": self._spec.name,
            "source": self._spec.pretrained_model_name_or_path,
            "gguf_file": self._spec.gguf_file,
            "dtype": self._spec.dtype,
        }

    def preview(self) -> TablePreview:
        """kedro-viz: where the weights come from (nothing is loaded)."""
        s = self._spec
        return records_preview(
            [
                {
                    "namespace": s.name,
                    "pretrained_model_name_or_path": s.pretrained_model_name_or_path,
                    "gguf_file": s.gguf_file,
                    "revision": s.revision,
                    "dtype": s.dtype,
                }
            ]
        )
