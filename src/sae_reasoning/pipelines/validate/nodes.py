"""Nodes of the validate pipeline: thin wrappers over `preflight` and `budget`."""

import logging

from sae_reasoning import budget as budgets
from sae_reasoning import budget_table, preflight

log = logging.getLogger(__name__)


def check_model(model, model_params: dict, capture: dict, causal: dict, sae_training: dict) -> dict:
    return preflight.check_model(model, model_params, capture, causal, sae_training)


def plan_budget(
    model,
    model_params: dict,
    capture: dict,
    causal: dict,
    sae_training: dict,
    data_loading: dict,
    budget: dict,
) -> dict:
    """The model's planned tokens, disk and device-hours, from its shapes (no weights)."""
    return budgets.plan(
        model,
        model.name,
        model_params,
        capture=capture,
        sae_training=sae_training,
        causal=causal,
        data_loading=data_loading,
        budget=budget,
    )


def summarize_validation(*results: dict) -> dict:
    """The report (saved as validation_report, failures included)."""
    return preflight.report(list(results))


def add_budget(checks: dict, budget: dict, *plans: dict) -> dict:
    """The report with the budget of every model; logs the budget table. A model that fails
    its checks (e.g. weights missing here) is still planned from its declared shapes."""
    summary = budget_table.summarize(list(plans), int(budget.get("n_devices") or 1))
    log.info(
        "Planned budget (sae_reasoning/budget.py; estimates at the device in params:budget):\n%s",
        budget_table.format_table(summary),
    )
    return {**checks, "budget": summary}


def fail_on_errors(validation_report: dict) -> None:
    """Fails the run when a model failed; runs after the report has been written."""
    preflight.raise_on_failure(validation_report)
