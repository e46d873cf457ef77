"""What the capture and sae_training nodes do with their store handles, then the catalog's
save: for tests that drive the datasets without a Kedro run."""

from sae_reasoning.activations.capture import capture_into
from sae_reasoning.pipelines.capture.nodes import score_into
from sae_reasoning.pipelines.sae_training.nodes import make_saes


def capture_and_save(ds, job):
    """capture_activations: the job runs in `ds`'s store handle; `ds` saves the manifests."""
    ds.save(capture_into(job, ds.store()))


def train_and_save(ds, items):
    """train_sae: each job's SAE made in `ds`'s store handle (other items, plain SAEs, as
    they are); `ds` saves them."""
    jobs = {hook: item for hook, item in items.items() if hasattr(item, "make_sae")}
    made = make_saes(jobs, ds.store())
    ds.save({hook: made.get(hook, item) for hook, item in items.items()})


def score_and_save(ds, job):
    """score_baseline: the job runs unless `ds`'s store handle holds its table; `ds` saves."""
    ds.save(score_into(job, ds.store()))
