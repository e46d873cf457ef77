"""`StoreHandleDataset`: the base of the catalog entries that hand a node a writable view
of another entry's storage (`<model>.activation_store`, `<model>.sae_store`), so the node
does the work (with resume and reuse) and the other entry saves what it returns."""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset, DatasetError

from sae_reasoning.datasets.storage import StorageBacked


class StoreHandleDataset(StorageBacked, AbstractDataset[None, Any]):
    """A handle, not data: load() gives the node a handle; nothing is saved here."""

    KIND = "store"  # how errors name the storage

    def __init__(
        self,
        *,
        path: str,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        local_cache: str | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        """Args: as the entry this handle writes for (same path, credentials, fs_args,
        local_cache)."""
        self._init_storage(self.KIND, path, credentials, fs_args, local_cache, metadata)

    def save(self, data: Any) -> None:
        raise DatasetError(
            f"{self._storage.url}: this {self.KIND} handle is an input only; save the "
            "node's result to the dataset it is for"
        )

    def _exists(self) -> bool:
        return True  # a store can always be opened (it may hold nothing yet)

    def _describe(self) -> dict[str, Any]:
        return {"path": self._storage.url}
