"""SAE training speed: this project's trainer step vs SAELens's, side by side, on CPU.

Same activation tensor, same starting weights, same shapes (d_in 576, d_sae 4608, batch
4096, float32), one Adam step at a time, the two trainers' steps alternating (so a load
change on a shared machine hits both):

  ours     sae_reasoning.sae.train.train_step: SAE.training_loss (sparse products on the
           active code entries, sparse_ops.py) + backward + decoder-gradient projection +
           fused Adam + decoder renormalisation, plus the dead-latent bookkeeping.
  SAELens  what its SAETrainer._train_step does: TrainingSAE.training_forward_pass +
           firing bookkeeping + backward + clip_grad_norm_ + Adam.step + zero_grad.

Cases: ReLU + L1, TopK k=32, and TopK k=32 with half the latents marked dead so that AuxK
runs every step (SAELens: its dead_neuron_mask; ours: the same mask).

The activations are realistic in structure: sums of ~32 of 4,608 planted unit directions
with positive coefficients plus noise, scaled to E||x|| = sqrt(d_in) (the units both
trainers use). Both SAEs start from one trained-like state (decoder rows = the planted
directions, encoder = their transpose, a bias that gives ReLU codes an L0 of a few tens),
because a step's cost depends on how sparse the codes are and freshly initialised ReLU
codes are half dense, which no trained SAE is.

"Dense ceiling": the tokens/s of a dense SAE step made of exactly five GEMMs of this shape
(encoder forward, decoder forward, dL/df, dW_dec, dW_enc) at the GEMM throughput measured
here on [4096 x 576] @ [576 x 4608]; "% of ceiling" above 100 means the step does less
than dense work.

    make bench-deps                              # pip install -e '.[bench]' (sae-lens 6.54.12)
    .venv/bin/python benchmarks/sae_train.py     # ~2-3 minutes on 2 cores
    .venv/bin/python benchmarks/sae_train.py --quick
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time

import torch

from sae_reasoning.sae import SAEConfig, build_sae
from sae_reasoning.sae.train import TrainingConfig, train_step

D_IN, D_SAE, BATCH, K = 576, 4608, 4096, 32
PLANTED_L0 = 32


def saelens_or_exit():
    try:
        import sae_lens
    except ImportError:
        sys.exit(
            "sae-lens is not installed: run `make bench-deps` "
            "(= .venv/bin/pip install -e '.[bench]', sae-lens==6.54.12) and retry."
        )
    return sae_lens


def activations(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(D_SAE, D_IN, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    idx = torch.randint(0, D_SAE, (n, PLANTED_L0), generator=g)
    coef = torch.rand(n, PLANTED_L0, generator=g) * 2 + 0.5
    x = torch.nn.functional.embedding_bag(
        idx.reshape(-1),
        D,
        mode="sum",
        per_sample_weights=coef.reshape(-1),
        offsets=torch.arange(0, n * PLANTED_L0, PLANTED_L0),
    )
    x += 0.1 * torch.randn(n, D_IN, generator=g)
    x *= math.sqrt(D_IN) / x.norm(dim=1).mean()
    return x, D


def start_state(D: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Decoder = planted directions; encoder bias set so ReLU codes have L0 ~ 2 x planted."""
    pre = x[:512] @ D.T
    bias = -torch.quantile(pre.flatten()[:2_000_000], 1 - 2 * PLANTED_L0 / D_SAE).item()
    return {
        "W_enc": D.T.contiguous(),
        "b_enc": torch.full((D_SAE,), bias),
        "W_dec": D.clone(),
        "b_dec": torch.zeros(D_IN),
    }


def gemm_flops(seconds: float) -> float:
    return 2 * BATCH * D_IN * D_SAE / seconds


def time_gemm(steps: int) -> float:
    a, b = torch.randn(BATCH, D_IN), torch.randn(D_IN, D_SAE)
    a @ b
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ours_step(arch: str, state, dead):
    """A closure running one training step of our trainer; returns the step's L0."""
    cfg = TrainingConfig(architecture=arch, k=K, lr=1e-4, l1_coefficient=2.0)
    sae = build_sae(
        SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=arch, k=K if arch == "topk" else None)
    )
    sae.load_state_dict(state)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas, fused=True)
    since_fired = torch.zeros(D_SAE, dtype=torch.long)
    hp = cfg.hparams(cfg.sparsity_coefficient())

    def step(x, i):
        out = train_step(sae, opt, x, cfg.lr, hp, dead, i + 1, "bench", None)
        since_fired.add_(len(x))
        since_fired[out.fired] = 0
        return out.l0

    return step


def saelens_step(sae_lens, arch: str, state, dead):
    """A closure running one step as SAELens's SAETrainer._train_step does."""
    from sae_lens.saes.sae import TrainStepInput

    if arch == "relu":
        cfg = sae_lens.StandardTrainingSAEConfig(
            d_in=D_IN, d_sae=D_SAE, l1_coefficient=2.0, dtype="float32", device="cpu"
        )
        sae = sae_lens.StandardTrainingSAE(cfg)
        coefficients = {"l1": 2.0}
    else:
        cfg = sae_lens.TopKTrainingSAEConfig(
            d_in=D_IN, d_sae=D_SAE, k=K, dtype="float32", device="cpu"
        )
        sae = sae_lens.TopKTrainingSAE(cfg)
        coefficients = {}
    sae.load_state_dict(state, strict=False)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, betas=(0.9, 0.999))  # as SAETrainer
    since_fired = torch.zeros(D_SAE)

    def step(x, i):
        sae.train()
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                coefficients=coefficients,
                dead_neuron_mask=dead,
                n_training_steps=i,
                is_logging_step=False,
            )
        )
        with torch.no_grad():
            did_fire = out.feature_acts.bool().float().sum(-2).bool()
            since_fired.add_(1)
            since_fired[did_fire] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return step


def side_by_side(ours, theirs, batches, warmup: int) -> tuple[float, float, float]:
    """Steps alternate between the two trainers, so load changes on a shared machine hit
    both alike; (ours tokens/s, SAELens tokens/s, our last L0), medians over timed steps."""
    t_ours, t_theirs, l0 = [], [], 0.0
    for i, x in enumerate(batches):
        t = time.perf_counter()
        theirs(x, i)
        t_theirs.append(time.perf_counter() - t)
        t = time.perf_counter()
        l0 = ours(x, i)
        t_ours.append(time.perf_counter() - t)
    return (
        BATCH / statistics.median(t_ours[warmup:]),
        BATCH / statistics.median(t_theirs[warmup:]),
        l0,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 timed steps per case (smoke run)")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per case")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    sae_lens = saelens_or_exit()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps, warmup = (3, 1) if args.quick else (args.steps, 2)
    torch.manual_seed(0)
    x, D = activations((steps + warmup) * BATCH)
    batches = list(x.split(BATCH))
    state = start_state(D, x)
    gemm_s = time_gemm(5 if args.quick else 20)
    ceiling = BATCH / (5 * gemm_s)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"sae-train: d_in {D_IN}, d_sae {D_SAE}, batch {BATCH}, float32, CPU "
        f"({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}, sae-lens {sae_lens.__version__}; "
        f"{steps} timed steps per case (median){', --quick' if args.quick else ''}; "
        f"1-min load average {load:.1f}"
    )
    print(
        f"dense GEMM [{BATCH}x{D_IN}]@[{D_IN}x{D_SAE}]: {gemm_s * 1e3:.1f} ms = "
        f"{gemm_flops(gemm_s) / 1e9:.1f} GFLOP/s -> dense-step ceiling {ceiling:,.0f} tokens/s "
        f"(5 GEMMs per step)"
    )
    dead_half = torch.zeros(D_SAE, dtype=torch.bool)
    dead_half[D_SAE // 2 :] = True
    cases = [
        ("ReLU+L1 (l1 2)", "relu", None),
        (f"TopK k={K}", "topk", None),
        (f"TopK k={K}, AuxK active", "topk", dead_half),
    ]
    print(
        f"{'case':<26}{'ours tok/s':>12}{'SAELens tok/s':>15}{'ratio':>8}"
        f"{'ours % ceil':>13}{'SAELens % ceil':>16}{'L0':>7}"
    )
    for name, arch, dead in cases:
        ours, theirs, l0 = side_by_side(
            ours_step(arch, state, dead), saelens_step(sae_lens, arch, state, dead), batches, warmup
        )
        print(
            f"{name:<26}{ours:>12,.0f}{theirs:>15,.0f}{ours / theirs:>7.2f}x"
            f"{100 * ours / ceiling:>12.0f}%{100 * theirs / ceiling:>15.0f}%{l0:>7.0f}"
        )


if __name__ == "__main__":
    main()
