"""Baseline scores: how the clean model answers every prompt, reused while nothing changed.

A `BaselineJob` is lazy, like capture's and SAE training's jobs: the scores dataset
(datasets/scores.py) runs it only when the parquet file on disk was written for another
fingerprint (model, prompts, generation settings), so a second `kedro run` skips the
scoring instead of recomputing it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import pandas as pd

from sae_reasoning.activations.capture import frame_digest
from sae_reasoning.benchmarks.parsing import answers_match
from sae_reasoning.models.loading import ModelHandle
from sae_reasoning.scoring import encode_prompts, score_conditions

log = logging.getLogger(__name__)
BASELINE_VERSION = 1
PROMPT_COLUMNS = ["id", "benchmark", "prompt", "target", "answer", "answer_type", "choice_targets"]


@dataclass
class BaselineJob:
    model: ModelHandle
    prompts: pd.DataFrame
    batch_size: int = 16
    generate_tokens: int = 12   # 0: no greedy generation, only teacher-forced scores

    def fingerprint(self) -> str:
        columns = [c for c in PROMPT_COLUMNS if c in self.prompts.columns]
        key = {"version": BASELINE_VERSION, "model": repr(self.model.spec),
               "prompts": frame_digest(self.prompts[columns]), "generate_tokens": self.generate_tokens}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def run(self) -> pd.DataFrame:
        """Each example's clean score: gold log-prob, exact match, and the model's own answer."""
        lm = self.model.load()
        encoded = encode_prompts(lm.tokenizer, self.prompts)
        scores = score_conditions(lm, encoded, batch_size=self.batch_size, progress=f"baseline {self.model.name}",
                                  generate_tokens=self.generate_tokens)["clean"]
        if self.generate_tokens:
            table = self.prompts.reset_index(drop=True)
            scores["answer"] = table["answer"].loc[scores["row"]].to_numpy()
            scores["generated_correct"] = [
                answers_match(g, a, t) for g, a, t in
                zip(scores["generated"], scores["answer"], table["answer_type"].loc[scores["row"]])]
        return scores.assign(model=self.model.name)
