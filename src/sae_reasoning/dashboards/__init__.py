"""Feature dashboards (the SAE-Vis / sae-dashboard page layout) as a self-contained static site.

data.py computes what a page shows (no Kedro); render.py turns it into HTML with inlined CSS,
JS and SVG (no network request); sae_reasoning.datasets.dashboards writes the folder.
"""

from sae_reasoning.dashboards.data import DashboardConfig, dashboard_data

__all__ = ["DashboardConfig", "dashboard_data"]
