"""`FeatureDashboardsDataset`: one model's feature dashboards as static HTML sites.

save({"model": ..., "hook_points": {hook: dashboard_data(...)}}) writes, per hook point,
`<filepath>/<hook point>/index.html`, `feature_<id>.html` for each analysed feature, and
`dashboard.json` (the data the pages show). Each hook folder is written beside its final
place and swapped in (publish.LocalSwap), so a failed save keeps the last site and no page
of a feature that is no longer analysed lingers. load() -> the same dict, read from the
dashboard.json files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from sae_reasoning.publish import LocalSwap

DATA_FILE = "dashboard.json"


def _write_site(folder: Path, data: dict) -> None:
    # jinja2 is imported only where pages are written
    from sae_reasoning.dashboards.render import render_site

    folder.mkdir()
    for name, html in render_site(data).items():
        (folder / name).write_text(html, encoding="utf-8")
    (folder / DATA_FILE).write_text(
        json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8"
    )


class FeatureDashboardsDataset(AbstractDataset[dict, dict]):
    # `filepath` (a folder), as the project's other entries name it, so kedro-viz shows where it is.
    def __init__(self, *, filepath: str, metadata: dict[str, Any] | None = None):
        self.path = Path(filepath)
        self.metadata = metadata

    def save(self, data: dict) -> None:
        if not isinstance(data, dict) or "hook_points" not in data:
            raise DatasetError(
                f"feature dashboards {self.path}: expected {{'model', 'hook_points'}}, "
                f"got {type(data).__name__}"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        # dashboard.json is written last: its presence marks a staging copy complete
        swap = LocalSwap(self.path, suffix="tmp", complete=lambda p: (p / DATA_FILE).exists())
        for hook, d in data["hook_points"].items():
            swap.publish(hook, lambda staging, d=d: _write_site(staging, d))
        # Hook points no longer configured would otherwise keep stale sites.
        for stale in self.path.iterdir():
            if (
                stale.is_dir()
                and not stale.name.startswith(".")
                and stale.name not in data["hook_points"]
            ):
                shutil.rmtree(stale)

    def load(self) -> dict:
        files = sorted(self.path.glob(f"*/{DATA_FILE}"))
        if not files:
            raise DatasetError(
                f"feature dashboards {self.path}: no {DATA_FILE} under it; run the causal "
                "pipeline (node feature_dashboards) first"
            )
        hooks = {f.parent.name: json.loads(f.read_text(encoding="utf-8")) for f in files}
        return {"model": next(iter(hooks.values())).get("model"), "hook_points": hooks}

    def _exists(self) -> bool:
        return any(self.path.glob(f"*/{DATA_FILE}"))

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self.path)}
