"""Sparse autoencoders: modules (SAELens parameterisation and file format), trainer, evals.

Usable without Kedro:

    from sae_reasoning.sae import TrainingConfig, train_sae, evaluate_sae, load_sae
    result = train_sae(ActivationSet.open("data/05_model_input/activations/smollm2_135m"),
                       "blocks.15.hook_resid_post", TrainingConfig())
    result.sae.save("my_sae")            # loadable by sae_lens.SAE.load_from_disk
"""

from sae_reasoning.sae.metrics import METRIC_NAMES, MetricsAccumulator, evaluate_sae
from sae_reasoning.sae.model import SAE, SAEConfig, StandardSAE, build_sae
from sae_reasoning.sae.saelens_format import (
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    UnsupportedSAEError,
    load_sae,
    save_sae,
)
from sae_reasoning.sae.train import (
    HeldOutSplit,
    TrainingConfig,
    TrainingDivergedError,
    TrainingResult,
    train_sae,
)
from sae_reasoning.sae.training_job import SAETrainingJob, load_sae_folder, write_sae_folder

__all__ = [
    "METRIC_NAMES", "MetricsAccumulator", "evaluate_sae",
    "SAE", "SAEConfig", "StandardSAE", "build_sae",
    "SAE_CFG_FILENAME", "SAE_WEIGHTS_FILENAME", "UnsupportedSAEError", "load_sae", "save_sae",
    "HeldOutSplit", "TrainingConfig", "TrainingDivergedError", "TrainingResult", "train_sae",
    "SAETrainingJob", "load_sae_folder", "write_sae_folder",
]
