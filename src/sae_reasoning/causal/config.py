"""The causal stage's parameters (conf/base/parameters_causal.yml, key `causal`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sae_reasoning.activations.store import MassiveActivationFilter
from sae_reasoning.causal.selection import EXAMPLES
from sae_reasoning.scoring import POSITIONS, LanguageModel, Scorer


@dataclass
class CausalConfig:
    top_k: int = 12  # candidates ablated exactly
    n_random_controls: int = 6  # random live features ablated alone, as a control
    n_random_sets: int = 3  # draws of top_k random live features ablated together
    n_random_directions: int = 3  # norm-matched random directions (control for the top-K set)
    n_null_features: int = (
        40  # random live features alone: the null |Δ| an important feature exceeds
    )
    null_quantile: float = 0.95  # ... beyond this quantile of the null's |Δ|
    # per-example changes within this many times the measured rounding change count as 0
    numerical_floor_factor: float = 2.0
    alpha: float = 0.05  # BH level (candidates pooled over modes, benchmarks, endpoints)
    require_above_chance: bool = True  # analyse only benchmarks the clean model solves above chance
    chance_alpha: float = 0.05  # level of the exact binomial test against chance
    examples: str = "all"  # all | correct (only examples the clean model answers correctly)
    modes: tuple[str, ...] = ("zero", "resample")
    positions: str = "answer"  # where ablations act: answer (last prompt token + answer) | all
    max_examples_per_benchmark: int = 60  # per split
    batch_size: int = 16
    stack_tokens: int = 512  # conditions share answer passes up to ~this many tokens (0: one each)
    stats_tokens: int = 20000  # captured tokens encoded for firing rates (alive features)
    n_boot: int = 2000  # bootstrap resamples per CI
    circuit_fraction: float = 0.8  # share of the whole-SAE effect a circuit must recover
    circuit_refine: int = 4  # sizes checked between the last failing and first passing size
    circuit_examples_per_benchmark: int = 20  # select examples the circuit search runs on (cost)
    circuit_mode: str = (
        "mean"  # ablation of features outside/inside the circuit (Marks et al.: mean)
    )
    circuit_sparse_fraction: float = (
        0.02  # a circuit above this share of alive features is "not sparse"
    )
    n_context_features: int = 10  # top features whose top-activating contexts are listed
    n_contexts: int = 5
    context_window: int = 12
    token_injection: dict = field(default_factory=dict)  # token_injection() keyword arguments
    seed: int = 0
    exclude: MassiveActivationFilter = field(default_factory=MassiveActivationFilter)

    @classmethod
    def from_params(cls, params: dict) -> CausalConfig:
        p = dict(params)
        exclude = p.pop("massive_activations", None)
        cfg = cls(**{k: (tuple(v) if k == "modes" else v) for k, v in p.items()})
        if exclude is not None:
            cfg.exclude = MassiveActivationFilter(**exclude)
        if cfg.examples not in EXAMPLES:
            raise ValueError(f"causal.examples {cfg.examples!r}: expected one of {EXAMPLES}")
        if cfg.positions not in POSITIONS:
            raise ValueError(f"causal.positions {cfg.positions!r}: expected one of {POSITIONS}")
        if not 0 < cfg.circuit_sparse_fraction < 1:
            raise ValueError(
                f"causal.circuit_sparse_fraction {cfg.circuit_sparse_fraction!r}: "
                f"expected a share in (0, 1)"
            )
        return cfg

    def scoring(self) -> dict:
        """Where ablations act, as score_conditions' keyword arguments. Position 0 is left
        clean with `all` exactly when SAE training leaves it out (massive_activations)."""
        return {"positions": self.positions, "exclude_first": self.exclude.exclude_first_position}

    def scorer(self, lm: LanguageModel, layer: int) -> Scorer:
        """The scorer of ablations at block `layer`'s output, acting where this config says."""
        return Scorer(
            lm, layer, batch_size=self.batch_size, stack_tokens=self.stack_tokens, **self.scoring()
        )
