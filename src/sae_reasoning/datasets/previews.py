"""What kedro-viz shows for a dataset (`kedro viz build --include-previews`, the metadata panel).

kedro-viz 12 previews a dataset through its `preview()` method and picks the renderer from the
method's return annotation (kedro_datasets._typing: TablePreview, JSONPreview, ImagePreview,
HTMLPreview, PlotlyPreview); the payload is serialised with pydantic, which refuses numpy
values. So tables are handed over as plain Python: `table_preview` below.

- `ListColumnParquetDataset`: kedro-datasets' pandas.ParquetDataset whose preview also works
  with list columns (the prompts' `choices`, `choice_targets`), which pyarrow returns as
  numpy arrays. Files, load and save are unchanged.
- `MarkdownDataset`: text.TextDataset whose preview is the markdown itself (kedro-viz renders
  an HTMLPreview's headings, tables and lists).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from kedro_datasets._typing import HTMLPreview, TablePreview
from kedro_datasets.pandas import ParquetDataset
from kedro_datasets.text import TextDataset


def json_safe(value: Any) -> Any:
    """A cell as JSON: numpy arrays and scalars become lists and Python numbers, NaN None."""
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (pd.Timestamp, pd.Timedelta)):
        return str(value)
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def table_preview(frame: pd.DataFrame) -> TablePreview:
    """`frame` in pandas' "split" layout (what kedro-viz's table renderer reads), JSON-safe."""
    return TablePreview(
        {
            "index": [json_safe(i) for i in frame.index],
            "columns": [str(c) for c in frame.columns],
            "data": [
                [json_safe(v) for v in row] for row in frame.itertuples(index=False, name=None)
            ],
        }
    )


def records_preview(records: list[dict[str, Any]]) -> TablePreview:
    """A table from a list of flat records (one row each, columns in first-seen order)."""
    return table_preview(pd.DataFrame.from_records(records))


class ListColumnParquetDataset(ParquetDataset):
    """pandas.ParquetDataset; `preview(nrows)` also serialises list columns."""

    def preview(self, nrows: int = 5) -> TablePreview:
        import pyarrow.parquet as pq

        table = pq.read_table(str(self._get_load_path()), columns=self._load_args.get("columns"))
        return table_preview(table.slice(0, nrows).to_pandas())


class MarkdownDataset(TextDataset):
    """text.TextDataset holding markdown; `preview(max_chars)` shows its beginning."""

    def preview(self, max_chars: int = 20000) -> HTMLPreview:
        # kedro-viz sanitises the HTML: escape the report's own <...> so it stays text
        text = self.load().replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        cut = text[:max_chars]
        if len(text) > max_chars:
            cut = (
                cut[: cut.rfind("\n")]
                + f"\n\n... ({len(text) - len(cut)} more characters in the file)"
            )
        return HTMLPreview(cut)
