"""Sparse autoencoders: modules (SAELens parameterisation and file format), trainer, evals.

Usable without Kedro:

    from sae_reasoning.sae import TrainingConfig, train_sae, evaluate_sae, load_sae
    result = train_sae(ActivationSet.open("data/05_model_input/activations/smollm2_135m"),
                       "blocks.15.hook_resid_post", TrainingConfig())
    save_sae(result.sae, "my_sae")      # loadable by sae_lens.SAE.load_from_disk

TrainingConfig(architecture=...) picks relu, topk, batchtopk, jumprelu or
matryoshka_batchtopk (one module each in architectures/, on the base in model.py; kernels
in sparse_ops.py; the file format in saelens_format.py). Ground truth:
ground_truth.planted_dictionary_recovery; with the model: spliced_eval.spliced_eval (CE
loss recovered, KL divergence).
"""

from sae_reasoning.sae.architectures import (
    BatchTopKSAE,
    JumpReLUSAE,
    MatryoshkaBatchTopKSAE,
    StandardSAE,
    TopKSAE,
    TrainHParams,
    build_sae,
)
from sae_reasoning.sae.ground_truth import planted_dictionary_recovery
from sae_reasoning.sae.metrics import METRIC_NAMES, MetricsAccumulator, evaluate_sae
from sae_reasoning.sae.model import SAE, SAEConfig
from sae_reasoning.sae.saelens_format import (
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    UnsupportedSAEError,
    load_sae,
    save_sae,
)
from sae_reasoning.sae.spliced_eval import spliced_eval
from sae_reasoning.sae.train import (
    HeldOutSplit,
    TrainingConfig,
    TrainingDivergedError,
    TrainingResult,
    train_sae,
)
from sae_reasoning.sae.training_job import SAETrainingJob, load_sae_folder, write_sae_folder

__all__ = [
    "METRIC_NAMES",
    "MetricsAccumulator",
    "evaluate_sae",
    "SAE",
    "SAEConfig",
    "StandardSAE",
    "TopKSAE",
    "BatchTopKSAE",
    "JumpReLUSAE",
    "MatryoshkaBatchTopKSAE",
    "TrainHParams",
    "build_sae",
    "planted_dictionary_recovery",
    "spliced_eval",
    "SAE_CFG_FILENAME",
    "SAE_WEIGHTS_FILENAME",
    "UnsupportedSAEError",
    "load_sae",
    "save_sae",
    "HeldOutSplit",
    "TrainingConfig",
    "TrainingDivergedError",
    "TrainingResult",
    "train_sae",
    "SAETrainingJob",
    "load_sae_folder",
    "write_sae_folder",
]
