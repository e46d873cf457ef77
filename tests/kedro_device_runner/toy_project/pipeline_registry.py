from kedro.pipeline import Pipeline, node

from tests.kedro_device_runner import (
    toy_nodes as t,  # a project's registry imports its nodes' modules
)


def register_pipelines() -> dict[str, Pipeline]:
    return {"__default__": Pipeline([node(t.make_base, "params:n", "base", name="make_base")])}
