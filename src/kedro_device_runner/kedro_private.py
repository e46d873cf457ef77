"""Every use of Kedro's private API in this package, in one place (checked on Kedro 1.7.0).

The rest of the package uses Kedro's public API only: `AbstractRunner` (whose `_run`,
`_get_executor` and `_is_async` are the documented contract of a custom runner),
`kedro.runner.Task`, `Pipeline.group_nodes_by`, `DataCatalog.get`, `kedro.framework.project`.
Kedro 1.x offers no public way for the following; if a Kedro release breaks one, only this
module changes.

1. `sub_catalog`: `DataCatalog._datasets`, `._lazy_datasets` and `__class__`. A worker
   gets a copy of the catalog that holds only its group's datasets. There is no public
   "subset" of a catalog: `DataCatalog(datasets=...)` would drop the catalog's config
   resolver (the dataset factories a runtime dataset resolves through) and its
   save/load versions, and the session's catalog class is composed at run time
   (`DataCatalog` + `CatalogCommandsMixin`), which cannot be pickled by reference.
2. `release_datasets`: `AbstractRunner._release_datasets`, the bookkeeping by which
   Kedro's runners free what no later node loads; not exposed as a function.
3. `hook_manager`: `kedro.framework.hooks.manager._create_hook_manager`,
   `_register_hooks`, `_register_hooks_entry_points`. A worker process runs nodes with
   the project's hooks but has no `KedroSession` (a session per worker would load the
   configuration and run the session's hooks again); this is how `KedroSession` builds
   its hook manager.
4. `node_input_map` / `node_with_inputs`: `Node._inputs` (a node's inputs as the
   keyword -> dataset mapping it was declared with; `Node.inputs` is only the list of
   names) and `Node._copy` (the same node with other inputs, every other field kept).
5. `is_ephemeral`: `AbstractDataset._EPHEMERAL` and `CachedDataset._dataset`; Kedro's
   own runners read `_EPHEMERAL` the same way (`kedro.runner.runner`).
6. `dataset_location`: `_filepath` / `_path` / `_protocol` of fsspec-based datasets,
   where they read and write; only used to word a warning.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from kedro.framework.hooks.manager import (
    _create_hook_manager,
    _register_hooks,
    _register_hooks_entry_points,
)
from kedro.runner import AbstractRunner

if TYPE_CHECKING:
    from kedro.io import CatalogProtocol


def sub_catalog(
    catalog: CatalogProtocol, names: list[str], picklable: Callable[[Any], bool]
) -> CatalogProtocol:
    """A copy of the catalog holding only `names` (materialised here), with its versions,
    validators and patterns; the class is the first `picklable` one of its MRO."""
    datasets = {name: catalog.get(name, fallback_to_runtime_pattern=True) for name in names}
    if not hasattr(catalog, "_datasets"):  # pragma: no cover - other CatalogProtocols
        return catalog
    sub = copy.copy(catalog)
    sub._datasets = datasets
    sub._lazy_datasets = {}
    sub.__class__ = next(c for c in type(catalog).__mro__ if picklable(c))
    return sub


def release_datasets(node, catalog: CatalogProtocol, load_counts, pipeline) -> None:
    """Free the datasets no later node of `pipeline` loads, as SequentialRunner does."""
    AbstractRunner._release_datasets(node, catalog, load_counts, pipeline)


def hook_manager(hooks: Iterable[Any] = (), disabled_plugins: Iterable[str] = ()):
    """A hook manager as `KedroSession` builds it: `hooks` (settings.HOOKS) plus the
    plugins' entry points, less `disabled_plugins`."""
    manager = _create_hook_manager()
    _register_hooks(manager, hooks)
    _register_hooks_entry_points(manager, disabled_plugins)
    return manager


def node_input_map(node) -> dict[str, str] | None:
    """The node's inputs as {keyword: dataset} when declared as a dict, else None."""
    inputs = getattr(node, "_inputs", None)
    return inputs if isinstance(inputs, dict) else None


def node_with_inputs(node, inputs: dict[str, str]):
    return node._copy(inputs=inputs)


def is_ephemeral(dataset: Any) -> bool:
    """Whether the dataset lives only in its process's memory."""
    inner = getattr(dataset, "_dataset", None)  # CachedDataset keeps a persisted one inside
    if inner is not None and type(dataset).__name__ == "CachedDataset":
        return is_ephemeral(inner)
    return bool(getattr(dataset, "_EPHEMERAL", False))


def dataset_location(dataset: Any) -> tuple[Any, str]:
    """(where the dataset reads and writes, its fsspec protocol: "file" when unknown)."""
    path = getattr(dataset, "_filepath", None) or getattr(dataset, "_path", "?")
    return path, getattr(dataset, "_protocol", "file")
