"""The registry: no dotted dataset name read outside its namespace (kedro#5021), and the
run's configuration reaches it through the project's ConfigCaptureHook."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

from kedro.config import OmegaConfigLoader
from kedro.pipeline.node import Node

from sae_reasoning import pipeline_registry
from sae_reasoning.hooks import ConfigCaptureHook
from sae_reasoning.pipeline_registry import configured_models, register_pipelines, run_config_loader

DOTTED_FLAG = "__dotted_dataset_name_warned__"  # Kedro warns once per process


def test_registry_pipelines_raise_no_dotted_dataset_name_warning(monkeypatch):
    monkeypatch.setattr(Node, DOTTED_FLAG, False, raising=False)
    monkeypatch.setattr(pipeline_registry, "configured_models", lambda: ["m1", "m2"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipelines = register_pipelines()
    assert not getattr(Node, DOTTED_FLAG, False)
    # every dotted name is read or written inside the namespace it names
    for node in pipelines["__default__"].nodes + pipelines["validate"].nodes:
        for name in (*node.inputs, *node.outputs):
            if "." in name and not name.startswith("params:"):
                assert node.namespace and name.startswith(f"{node.namespace}."), (node.name, name)
    assert {"m1_report_section", "m2_report_section"} <= set(
        next(n for n in pipelines["reporting"].nodes if n.name == "build_report").inputs
    )


def test_a_dotted_read_outside_its_namespace_would_be_caught(monkeypatch):
    """The check above can fail: Kedro's warning is raised when the flag is reset."""
    monkeypatch.setattr(Node, DOTTED_FLAG, False, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Node(len, inputs="m1.x", outputs="y", name="outside")
    assert any("'.' characters" in str(w.message) for w in caught)


def test_the_run_config_comes_from_the_hook_that_kept_it(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "local").mkdir()
    (tmp_path / "base" / "parameters.yml").write_text("models:\n  b: {}\n  a: {}\n")
    loader = OmegaConfigLoader(conf_source=str(tmp_path), base_env="base", default_run_env="local")
    hook = ConfigCaptureHook()
    assert run_config_loader([hook]) is None  # no context yet
    hook.after_context_created(SimpleNamespace(config_loader=loader))
    assert run_config_loader([object(), hook]) is loader
    assert configured_models(run_config_loader([hook])) == ["b", "a"]
