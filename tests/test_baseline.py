"""BaselineJob with worked-solution prompts (real reasoning-gym GSM8K rows) beside
answer-only ones, on a tiny random model: where `correct` comes from, and that answer-only
rows score exactly as before."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from sae_reasoning.baseline import BaselineJob
from sae_reasoning.benchmarks.answers import answers_match, extract_answer
from sae_reasoning.benchmarks.parsing import normalize_raw, parse_number
from sae_reasoning.benchmarks.prompts import build_examples, build_prompts
from sae_reasoning.benchmarks.sources import generate_native
from sae_reasoning.datasets.scores import ScoresDataset
from sae_reasoning.generation import GenerationSettings, solve
from sae_reasoning.models import ModelHandle, ModelSpec
from sae_reasoning.pipelines.capture.nodes import baseline_job
from sae_reasoning.scoring import encode_prompts, score_conditions
from tests.prompts_fixture import tiny_prompts
from tests.store_helpers import score_and_save

CONF = Path(__file__).resolve().parents[1] / "conf" / "base"
SETTINGS = GenerationSettings(max_new_tokens=24, batch_size=2)


@pytest.fixture(scope="module")
def worked_prompts():
    """4 GSM8K stand-ins (gsm_symbolic) with one worked-solution shot."""
    rows = normalize_raw(generate_native("gsm8k", "gsm_symbolic", 12, seed=0), "gsm8k")
    config = {
        "seed": 0,
        "select_fraction": 0.5,
        "benchmarks": {
            "gsm8k": {"n_examples": 4, "n_shots": 1, "shot_pool": 2, "worked_solutions": True}
        },
    }
    examples, shots = build_examples({"gsm8k": rows}, config)
    prompts = build_prompts(examples, shots, None, config["benchmarks"])
    assert (prompts["prompt_format"] == "worked_solution").all()
    return prompts


@pytest.fixture
def handle(tiny_model_dirs):
    # GPT-NeoX: its random weights write digits (the tiny Llama repeats '#'), so a planted
    # numeric answer can be found in its solutions
    return ModelHandle(
        ModelSpec("tiny_neox", str(tiny_model_dirs["gpt_neox"]), converted_cache=None)
    )


def _answer_only_reference(lm, prompts, generate_tokens):
    """What the baseline gave answer-only rows before worked solutions existed."""
    clean = score_conditions(
        lm, encode_prompts(lm.tokenizer, prompts), generate_tokens=generate_tokens, progress=None
    )["clean"]
    clean["generated_correct"] = [
        answers_match(g, a, t)
        for g, a, t in zip(clean["generated"], prompts["answer"], prompts["answer_type"])
    ]
    return clean


def test_worked_rows_take_correct_from_the_generated_solution(
    handle, worked_prompts, one_torch_thread
):
    lm = handle.load()
    answer_only = tiny_prompts()
    table = pd.concat([answer_only, worked_prompts], ignore_index=True)
    worked = table["prompt_format"] == "worked_solution"
    # Plant: two worked rows get as gold answer what the model states in its own solution,
    # so the generated solution is right while the teacher-forced answer (a random model's
    # argmax after the gold solution) is not; the other two keep their true gold answers.
    said = solve(lm, table[worked], SETTINGS)
    at = table.index[worked][:2]
    for i, answer in zip(at, said["extracted_answer"][:2]):
        assert answer is not None and parse_number(answer) is not None
        table.loc[i, ["answer", "target"]] = [answer, f" {answer}"]

    scores = BaselineJob(handle, table, generate_tokens=3, solution=SETTINGS).run().set_index("row")
    own = scores.loc[worked.to_numpy()]
    assert (own["accuracy_method"] == "generated_solution").all()
    assert own.loc[at, "correct"].tolist() == [True, True]
    assert own.loc[at, "teacher_forced_correct"].tolist() == [False, False]  # they differ
    assert (own["correct"] == own["generated_correct"]).all()
    # the text is the model's continuation of generation_prompt (not of the gold solution)
    again = solve(lm, table[worked], SETTINGS)
    assert own["generated"].tolist() == again["generated"].tolist()
    assert own["extracted_answer"].tolist() == again["extracted_answer"].tolist()
    assert own["correct"].tolist() == again["correct"].tolist()
    for text, answer in zip(own["generated"], own["extracted_answer"]):
        assert extract_answer(text) == answer
    # gold_logprob: the final answer teacher-forced after the gold solution (prompt + target)
    forced = score_conditions(lm, encode_prompts(lm.tokenizer, table), progress=None)[
        "clean"
    ].set_index("row")
    assert own["gold_logprob"].tolist() == pytest.approx(
        forced.loc[own.index, "gold_logprob"].tolist()
    )
    assert own["teacher_forced_correct"].tolist() == forced.loc[own.index, "correct"].tolist()

    # answer-only rows: exactly today's values
    rest = scores.loc[(~worked).to_numpy()]
    ref = _answer_only_reference(lm, answer_only, 3).set_index("row")
    assert (rest["accuracy_method"] == "teacher_forced_exact").all()
    for column in ("id", "gold_logprob", "correct", "generated", "kl", "chance"):
        assert rest[column].tolist() == ref[column].tolist(), column
    assert rest["generated_correct"].tolist() == ref["generated_correct"].tolist()
    assert (rest["teacher_forced_correct"] == rest["correct"]).all()
    assert rest["extracted_answer"].isna().all()


def test_answer_only_tables_keep_their_columns_and_values(handle, one_torch_thread):
    prompts = tiny_prompts()
    scores = BaselineJob(handle, prompts, generate_tokens=3).run()
    ref = _answer_only_reference(handle.load(), prompts, 3)
    assert "extracted_answer" not in scores.columns  # nothing worked: no solution columns
    for column in ("gold_logprob", "correct", "generated", "generated_correct"):
        assert scores[column].tolist() == ref[column].tolist(), column
    assert (scores["accuracy_method"] == "teacher_forced_exact").all()
    bare = BaselineJob(handle, prompts, generate_tokens=0).run()
    assert "generated" not in bare.columns and bare["correct"].tolist() == ref["correct"].tolist()


def test_worked_rows_without_greedy_answers(handle, worked_prompts, one_torch_thread):
    """capture.generate: false turns off the answer-only greedy answer, not the solutions
    (worked rows' accuracy needs them)."""
    scores = BaselineJob(handle, worked_prompts, generate_tokens=0, solution=SETTINGS).run()
    assert (scores["accuracy_method"] == "generated_solution").all()
    assert (
        scores["generated"].notna().all()
        and (scores["correct"] == scores["generated_correct"]).all()
    )


def test_mixed_scores_round_trip_through_the_scores_dataset(
    tmp_path, handle, worked_prompts, one_torch_thread
):
    ds = ScoresDataset(filepath=str(tmp_path / "baseline_scores.parquet"))
    table = pd.concat([tiny_prompts(), worked_prompts], ignore_index=True)  # no template: null
    job = BaselineJob(handle, table, generate_tokens=3, solution=SETTINGS)
    score_and_save(ds, job)
    loaded = ds.load()
    assert len(loaded) == len(table)
    assert loaded["accuracy_method"].value_counts().to_dict() == {
        "teacher_forced_exact": 10,
        "generated_solution": 4,
    }
    worked = loaded["accuracy_method"] == "generated_solution"
    assert loaded.loc[worked, "extracted_answer"].notna().all()
    assert loaded.loc[~worked, "extracted_answer"].isna().all()
    assert (loaded.loc[worked, "generated_tokens"] <= SETTINGS.max_new_tokens).all()
    assert ds.fingerprint() == job.fingerprint()
    # templates ride along, for cluster statistics
    assert loaded.loc[worked, "template"].str.startswith("gsm_symbolic:").all()
    assert loaded.loc[~worked, "template"].isna().all()


def test_capture_node_reads_the_solution_settings(handle):
    params = yaml.safe_load((CONF / "parameters_capture.yml").read_text())["capture"]
    job = baseline_job(handle, tiny_prompts(), params)
    assert job.solution == GenerationSettings(
        max_new_tokens=320, stop=("\n\nQuestion:",), batch_size=8
    )
    assert job.generate_tokens == params["max_new_tokens"]
    bare = baseline_job(
        handle, tiny_prompts(), {k: v for k, v in params.items() if k != "solution_generation"}
    )
    assert bare.solution == GenerationSettings()


def test_fingerprint_includes_the_solution_settings_only_with_worked_rows(handle, worked_prompts):
    answer_only = tiny_prompts().assign(prompt_format="answer_only")
    answer_only["generation_prompt"] = answer_only["prompt"]
    other = GenerationSettings(max_new_tokens=64)
    assert (
        BaselineJob(handle, answer_only).fingerprint()
        == BaselineJob(handle, answer_only, solution=other).fingerprint()
    )
    assert (
        BaselineJob(handle, worked_prompts).fingerprint()
        != BaselineJob(handle, worked_prompts, solution=other).fingerprint()
    )
    assert (
        BaselineJob(handle, worked_prompts).fingerprint()
        != BaselineJob(
            handle, worked_prompts, solution=GenerationSettings(stop=("\n\n",))
        ).fingerprint()
    )
    assert (
        BaselineJob(handle, worked_prompts).fingerprint()  # batching does not change the text
        == BaselineJob(
            handle, worked_prompts, solution=GenerationSettings(batch_size=1)
        ).fingerprint()
    )
    changed = worked_prompts.copy()
    changed.loc[0, "generation_prompt"] += " "
    assert (
        BaselineJob(handle, changed).fingerprint()
        != BaselineJob(handle, worked_prompts).fingerprint()
    )
