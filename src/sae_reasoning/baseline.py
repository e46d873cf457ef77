"""Baseline scores: how the clean model answers every prompt, reused while nothing changed.

The score_baseline node runs a `BaselineJob` only when the stored parquet file
(datasets/scores.py) was written for another fingerprint (model, prompts, generation
settings), so a second `kedro run` skips the scoring instead of recomputing it.

Per example (scoring.py): `gold_logprob`, the teacher-forced log-prob of `target` after
`prompt`, and `correct`. How `correct` is decided is in `accuracy_method`:

- "teacher_forced_exact" (answer-only prompts): scoring.py's check on the teacher-forced
  pass (greedy decoding reproduces the gold answer and ends the line; for choice
  questions, the gold choice has the highest log-prob).
- "generated_solution" (prompt_format "worked_solution"): the model writes its own
  solution from `generation_prompt` (generation.py); `correct` is whether the answer it
  states (`extracted_answer`) matches the gold one, also in `generated_correct`, with the
  text in `generated`. `gold_logprob` stays the final answer's log-prob teacher-forced
  after the GOLD solution, which `prompt` ends with.

`teacher_forced_correct` keeps the teacher-forced check for every row; `template` (where
the prompts table has it) is copied from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sae_reasoning.activations.capture import frame_digest
from sae_reasoning.benchmarks.answers import answers_match
from sae_reasoning.generation import GenerationSettings, solve
from sae_reasoning.models.loading import ModelHandle
from sae_reasoning.scoring import Scorer, encode_prompts

log = logging.getLogger(__name__)
BASELINE_VERSION = 2  # 2: accuracy_method, teacher_forced_correct; worked-solution rows
PROMPT_COLUMNS = [
    "id",
    "benchmark",
    "prompt",
    "target",
    "answer",
    "answer_type",
    "choice_targets",
    "prompt_format",
    "generation_prompt",
    "template",
]
WORKED = "worked_solution"


@dataclass
class BaselineJob:
    model: ModelHandle
    prompts: pd.DataFrame
    batch_size: int = 16
    generate_tokens: int = 12  # 0: no greedy answer of answer-only rows, only teacher-forced scores
    # Worked-solution rows: how the model's own solution is generated (always, whatever
    # generate_tokens says: their `correct` is that solution's answer).
    solution: GenerationSettings = field(default_factory=GenerationSettings)

    def worked_rows(self) -> np.ndarray:
        """Positions (in the prompts table) of the rows in the worked-solution format."""
        if "prompt_format" not in self.prompts.columns:
            return np.zeros(0, dtype=int)
        return np.flatnonzero((self.prompts["prompt_format"] == WORKED).to_numpy())

    def fingerprint(self) -> str:
        columns = [c for c in PROMPT_COLUMNS if c in self.prompts.columns]
        key = {
            "version": BASELINE_VERSION,
            "model": repr(self.model.spec),
            "prompts": frame_digest(self.prompts[columns]),
            "generate_tokens": self.generate_tokens,
        }
        if len(self.worked_rows()):
            key["solution_generation"] = self.solution.key()
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def run(self) -> pd.DataFrame:
        """Each example's clean score: gold log-prob, correctness (and how it was decided), and
        the model's own answer."""
        lm = self.model.load()
        encoded = encode_prompts(lm.tokenizer, self.prompts)
        scores = Scorer(lm, batch_size=self.batch_size).baseline(
            encoded, generate_tokens=self.generate_tokens, progress=f"baseline {self.model.name}"
        )
        table = self.prompts.reset_index(drop=True)
        scores["teacher_forced_correct"] = scores["correct"]
        scores["accuracy_method"] = "teacher_forced_exact"
        if "template" in table.columns:  # clusters for statistics (benchmarks.prompts.clusters)
            scores["template"] = table["template"].loc[scores["row"]].to_numpy()
        if self.generate_tokens:
            scores["answer"] = table["answer"].loc[scores["row"]].to_numpy()
            scores["generated_correct"] = [
                answers_match(g, a, t)
                for g, a, t in zip(
                    scores["generated"], scores["answer"], table["answer_type"].loc[scores["row"]]
                )
            ]
        worked = self.worked_rows()
        if len(worked):
            self._score_solutions(lm, table, worked, scores)
        return scores.assign(model=self.model.name)

    def _score_solutions(
        self, lm, table: pd.DataFrame, worked: np.ndarray, scores: pd.DataFrame
    ) -> None:
        """Worked-solution rows: `correct` from the model's own generated solution (in place)."""
        solved = solve(
            lm, table.iloc[worked], self.solution, progress=f"solutions {self.model.name}"
        )
        label = {row: label for label, row in zip(scores.index, scores["row"])}
        at = [label[row] for row in worked[solved["row"].to_numpy()]]
        scores["answer"] = table["answer"].loc[scores["row"]].to_numpy()
        for column in ("generated", "generated_correct", "extracted_answer", "generated_tokens"):
            # answer-only rows keep their values (or None where they have none)
            scores[column] = (
                scores[column].astype(object)
                if column in scores.columns
                else pd.Series([None] * len(scores), index=scores.index, dtype=object)
            )
            scores.loc[at, column] = pd.Series(
                solved["correct" if column == "generated_correct" else column].to_numpy(),
                index=at,
                dtype=object,
            )
        scores.loc[at, "correct"] = solved["correct"].to_numpy(dtype=bool)
        scores.loc[at, "accuracy_method"] = "generated_solution"
        log.info(
            "baseline %s: %d worked-solution rows, accuracy of the generated solutions %.3f",
            self.model.name,
            len(worked),
            float(solved["correct"].mean()),
        )
