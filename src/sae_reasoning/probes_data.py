"""What the probes read: one residual row per example at the answer position, and its labels.

The answer position is the last prompt token, whose residual predicts the first answer
token. Its row comes from the capture store, not from a new forward pass (no model time):
capture stores each example's question tokens followed by its gold answer tokens
(teacher-forced), positions counted from the start of the prompt (the shared few-shot block
is not stored, but counts). So the last prompt token of an example is the row at

    position = (the example's largest stored position) - n_answer_tokens

with `n_answer_tokens` from baseline_scores (the gold answer's token count, tokenised as
capture tokenises it). Padding never reaches the store. The massive-activation rule is NOT
applied: the answer position is never position 0 when a prompt has a BOS or a question
before it, and a row above the norm ratio is still the model's state there; such rows are
counted (`n_over_norm_rule`) so the report can say the SAE is off-distribution on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from sae_reasoning.activations.store import ActivationSet, MassiveActivationFilter
from sae_reasoning.benchmarks.prompts import SPLITS
from sae_reasoning.benchmarks.prompts import clusters as template_clusters


@dataclass
class AnswerRows:
    """Answer-position rows of one hook point; all arrays are aligned, one entry per example."""

    rows: np.ndarray  # [n] position in the prompts table
    ids: np.ndarray  # [n] prompts `id`
    benchmark: np.ndarray  # [n] benchmark name
    split: np.ndarray  # [n] select | heldout
    correct: np.ndarray  # [n] bool, baseline_scores `correct`
    cluster: np.ndarray  # [n] cluster label (template, else the example's own id)
    resid: np.ndarray  # [n, d_model] float32 residual at the answer position
    n_over_norm_rule: int  # rows above the massive-activation norm ratio (kept)

    def take(self, mask: np.ndarray) -> AnswerRows:
        return AnswerRows(
            self.rows[mask],
            self.ids[mask],
            self.benchmark[mask],
            self.split[mask],
            self.correct[mask],
            self.cluster[mask],
            self.resid[mask],
            self.n_over_norm_rule,
        )


def labelled_examples(model: str, prompts: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """Prompts rows with split, cluster, `correct` and `n_answer_tokens` (by id); a clear error
    naming the model and the ids when baseline_scores lacks some example."""
    prompts = prompts.reset_index(drop=True)
    missing_cols = {"id", "benchmark", "split"} - set(prompts.columns)
    if missing_cols:
        raise ValueError(f"probes {model}: the prompts table lacks columns {sorted(missing_cols)}")
    bad_split = sorted(set(prompts["split"].astype(str)) - set(SPLITS))
    if bad_split:
        raise ValueError(
            f"probes {model}: prompts column `split` has values {bad_split}; expected {SPLITS}"
        )
    need = {"id", "correct", "n_answer_tokens"} - set(baseline.columns)
    if need:
        raise ValueError(f"probes {model}: baseline_scores lacks columns {sorted(need)}")
    base = baseline.assign(id=baseline["id"].astype(str)).drop_duplicates("id").set_index("id")
    ids = prompts["id"].astype(str)
    absent = ids[~ids.isin(base.index)].tolist()
    if absent:
        raise ValueError(
            f"probes {model}: {len(absent)} example(s) of the prompts table are missing from "
            f"{model}.baseline_scores, e.g. {absent[:5]}; re-run capture (score_baseline) so "
            "every prompt has a baseline score"
        )
    out = prompts[["id", "benchmark", "split"]].copy()
    out["cluster"] = template_clusters(prompts).to_numpy()
    out["correct"] = base.loc[ids, "correct"].astype(bool).to_numpy()
    out["n_answer_tokens"] = base.loc[ids, "n_answer_tokens"].astype(int).to_numpy()
    return out


def answer_rows(
    model: str,
    activations: ActivationSet,
    hook: str,
    examples: pd.DataFrame,
    rule: MassiveActivationFilter = MassiveActivationFilter(),
) -> AnswerRows:
    """The residual at the last prompt token of every example in `examples` (labelled_examples)."""
    index, resid, n_over = [], [], 0
    for bench, group in examples.groupby("benchmark", sort=True):
        store = activations.stores.get(bench, {}).get(hook)
        if store is None:
            raise ValueError(
                f"probes {model}: no captured activations for benchmark {bench!r} at {hook} "
                f"in {activations.root}"
            )
        meta = store.metadata()
        last = meta.groupby("example_index")["position"].agg(["max", "count"])
        rows = group.index.to_numpy()
        absent = [examples.at[r, "id"] for r in rows if r not in last.index]
        if absent:
            raise ValueError(
                f"probes {model}: {len(absent)} example(s) of {bench} have no captured rows at "
                f"{hook}, e.g. {absent[:5]}: the activations do not match the prompts table; "
                "re-run capture"
            )
        target = last.loc[rows, "max"].to_numpy() - group["n_answer_tokens"].to_numpy()
        short = rows[group["n_answer_tokens"].to_numpy() >= last.loc[rows, "count"].to_numpy()]
        if len(short):
            raise ValueError(
                f"probes {model}: {bench} examples {examples.loc[short, 'id'].tolist()[:5]} have "
                "no question tokens before their answer in the store: the activations do not "
                "match baseline_scores' n_answer_tokens; re-run capture and score_baseline"
            )
        key = pd.Series(
            np.arange(len(meta)),
            index=pd.MultiIndex.from_arrays(
                [meta["example_index"].to_numpy(), meta["position"].to_numpy()]
            ),
        )
        at = key.reindex(pd.MultiIndex.from_arrays([rows, target])).to_numpy()
        if np.isnan(at.astype(float)).any():
            gap = examples.loc[rows[np.isnan(at.astype(float))], "id"].tolist()
            raise ValueError(
                f"probes {model}: {bench} examples {gap[:5]} have no stored row at "
                f"their last prompt token ({hook}): the activations do not match the "
                "prompts table; re-run capture"
            )
        hit = _gather(store, at.astype(np.int64))
        n_over += int(
            (
                ~rule.keep_mask(
                    torch.ones(len(at), dtype=torch.long),
                    torch.from_numpy(meta["norm"].to_numpy()[at.astype(np.int64)]),
                    store.median_norm,
                )
            ).sum()
        )
        index.append(rows)
        resid.append(hit)
    rows = np.concatenate(index)
    ex = examples.loc[rows]
    return AnswerRows(
        rows=rows,
        ids=ex["id"].astype(str).to_numpy(),
        benchmark=ex["benchmark"].astype(str).to_numpy(),
        split=ex["split"].astype(str).to_numpy(),
        correct=ex["correct"].to_numpy(bool),
        cluster=ex["cluster"].astype(str).to_numpy(),
        resid=np.concatenate(resid).astype(np.float32),
        n_over_norm_rule=n_over,
    )


def _gather(store, flat: np.ndarray) -> np.ndarray:
    """Rows `flat` (global row numbers across shards, in that order) of one store, float32."""
    out = np.empty((len(flat), store.d_model), dtype=np.float32)
    start = 0
    for i, entry in enumerate(store.manifest["shards"]):
        stop = start + int(entry["n_tokens"])
        inside = np.flatnonzero((flat >= start) & (flat < stop))
        if len(inside):
            acts = store.shard(i)["activations"]
            out[inside] = acts[torch.from_numpy(flat[inside] - start)].numpy()
        start = stop
    return out


@torch.no_grad()
def sae_codes(sae, resid: np.ndarray, batch: int = 1024) -> np.ndarray:
    """SAE feature activations f [n, d_sae] of residual rows (float32, on the SAE's device)."""
    w = sae.W_dec
    parts = [
        sae.encode(torch.from_numpy(resid[i : i + batch]).to(w.device, w.dtype))
        .float()
        .cpu()
        .numpy()
        for i in range(0, len(resid), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, w.shape[0]), np.float32)
