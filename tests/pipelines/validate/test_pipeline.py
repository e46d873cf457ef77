"""validate writes validation.json, failures included, and then fails (issue 14 item 8)."""

from __future__ import annotations

import json

import pytest

from sae_reasoning import preflight
from sae_reasoning.pipelines.validate.nodes import fail_on_errors, summarize_validation
from tests.pipelines.validate.project import kedro_run, make_project

OK = {"model": "a", "ok": True}
BAD = {"model": "b", "ok": False, "error": "layers [99]: the model has 4 blocks (0..3)"}


def test_report_lists_failures_and_the_next_node_fails():
    report = summarize_validation(OK, BAD)  # returned (and so saved), not raised
    assert report["ok"] is False and report["failed"] == ["b"]
    assert report["models"] == [OK, BAD]
    with pytest.raises(
        preflight.PreflightError, match=r"failed for 1 of 2 model\(s\):\n  - b: layers"
    ):
        fail_on_errors(report)
    fail_on_errors(summarize_validation(OK))


@pytest.mark.slow
def test_failed_validate_run_writes_validation_json(tmp_path, tiny_model_dirs):
    root = make_project(tmp_path / "proj", tiny_model_dirs["llama"], layers="99")
    result = kedro_run(root, "--pipeline=validate")
    assert result.returncode != 0
    assert "pre-flight check failed for 1 of 1 model(s)" in result.stdout + result.stderr
    report = json.loads((root / "data/08_reporting/validation.json").read_text())
    assert report["ok"] is False and report["failed"] == ["tiny"]
    assert "the model has 4 blocks" in report["models"][0]["error"]
