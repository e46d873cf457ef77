"""kedro-datasets' networkx.JSONDataset, plus a preview so kedro-viz shows the circuit.

kedro-viz previews a dataset only through its `preview()` method, which
networkx.JSONDataset lacks; the file format (networkx node-link JSON) is unchanged.
"""

from __future__ import annotations

import json

import networkx
from kedro_datasets._typing import JSONPreview
from kedro_datasets.networkx import JSONDataset


class CircuitGraphDataset(JSONDataset):
    def preview(self, max_nodes: int = 50) -> JSONPreview:
        graph = self.load()
        keep = ["answer"] + sorted(
            (n for n in graph.nodes if n != "answer"), key=lambda n: graph.nodes[n].get("order", 0)
        )[:max_nodes]
        data = networkx.node_link_data(
            graph.subgraph([n for n in keep if n in graph]), edges="edges"
        )
        return JSONPreview(json.dumps(data, default=str))
