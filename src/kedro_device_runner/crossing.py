"""What travels between processes: a namespace group sent to its worker, and the
datasets passed between a namespace and anything outside it (which must be persisted)."""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

import cloudpickle

from kedro_device_runner.kedro_private import is_ephemeral, sub_catalog
from kedro_device_runner.units import Unit, crossings, where_text
from kedro_device_runner.worker import GroupPayload

if TYPE_CHECKING:
    from kedro.io import CatalogProtocol
    from kedro.pipeline import Pipeline


class CrossProcessDatasetError(ValueError):
    """A dataset kept in memory would have to travel between processes."""


def group_payload(unit: Unit, catalog: CatalogProtocol, run_id: str, is_async: bool) -> bytes:
    """The group `unit` as bytes for its worker, with a catalog of only its datasets."""
    names = sorted({ds for n in unit.nodes for ds in (*n.inputs, *n.outputs)})
    group = GroupPayload(
        namespace=unit.name,
        nodes=list(unit.nodes),
        catalog=sub_catalog(catalog, names, picklable),
        is_async=is_async,
        run_id=run_id,
    )
    try:
        return dumps(group)
    except Exception as exc:  # noqa: BLE001 - pinpoint the culprit below
        culprits = [f"node {n.name}" for n in unit.nodes if not picklable(n)]
        culprits += [f"dataset {d}" for d in names if not picklable(catalog.get(d))]
        raise CrossProcessDatasetError(
            f"Namespace '{unit.name}' cannot be sent to a worker process: "
            f"{', '.join(culprits) or exc} cannot be pickled ({exc}). Nodes and datasets "
            "must be picklable by cloudpickle (no open files, locks or live connections)."
        ) from exc


def check_crossings(
    runner: str, pipeline: Pipeline, units: dict[str, Unit], catalog: CatalogProtocol
) -> None:
    """Data passed between processes must go through a dataset that persists it."""
    problems = [
        f"  '{ds}' ({type(dataset).__name__}): saved by {src} in {where_text(src_owner)}, "
        f"loaded by {dst} in {where_text(dst_owner)}"
        for ds, dataset, src, src_owner, dst, dst_owner in crossings(pipeline, units, catalog)
        if is_ephemeral(dataset)
    ]
    if problems:
        raise CrossProcessDatasetError(
            f"{runner} runs each namespace in its own process, so data passed "
            "between a namespace and anything outside it must be persisted. These "
            "datasets live only in memory:\n"
            + "\n".join(sorted(set(problems)))
            + "\nDeclare them in the catalog with a dataset that writes to disk "
            "(e.g. pickle.PickleDataset), or use SequentialRunner."
        )


def lost_outputs(pipeline: Pipeline, unit: Unit, catalog: CatalogProtocol) -> list[str]:
    """The pipeline outputs of group `unit` that its worker keeps in memory (not returned)."""
    outputs = pipeline.outputs()
    return sorted(
        ds
        for n in unit.nodes
        for ds in n.outputs
        if ds in outputs and is_ephemeral(catalog.get(ds, fallback_to_runtime_pattern=True))
    )


def dumps(obj: Any) -> bytes:
    """A group for a worker process, as bytes that `pickle.loads` reads there.

    cloudpickle, not pickle: fsspec's async filesystems (s3fs, gcsfs...) hang sync wrappers
    named like their class's methods on each instance, which pickle refuses ("not the same
    object as S3FileSystem._glob"), so a kedro-datasets entry at an s3:// URL could not
    reach a worker. cloudpickle sends those by value, and importable functions by name.
    """
    return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def picklable(obj: Any) -> bool:
    try:
        dumps(obj)
    except Exception:  # noqa: BLE001
        return False
    return True
