import pandas as pd
import pytest

from sae_reasoning.benchmarks.parsing import normalize_raw
from sae_reasoning.benchmarks.prompts import (
    EXAMPLE_COLUMNS,
    PROMPT_COLUMNS,
    SHOT_COLUMNS,
    assign_split,
    build_examples,
    build_prompts,
    clusters,
    format_prompt,
    select_rows,
)


def _gsm(n):
    return normalize_raw(
        pd.DataFrame(
            {
                "question": [f"What is {i} plus {i}?" for i in range(n)],
                "answer": [f"{i}+{i}={2 * i}\n#### {2 * i}" for i in range(n)],
                "template": [f"plus-{i % 4}" for i in range(n)],
            }
        ),
        "gsm8k",
    )


def _logic(n):
    return normalize_raw(
        pd.DataFrame(
            {
                "question": [f"Is {i} even?" for i in range(n)],
                "answer": ["Yes" if i % 2 == 0 else "No" for i in range(n)],
                "choices": [["Yes", "No"]] * n,
            }
        ),
        "logic",
    )


def _config(n_examples=10, n_shots=3, shot_pool=6, **extra):
    per = {"n_examples": n_examples, "n_shots": n_shots, "shot_pool": shot_pool}
    return {
        "seed": 0,
        "select_fraction": 0.5,
        "benchmarks": {"gsm8k": dict(per), "logic": dict(per)},
        **extra,
    }


def test_shots_never_overlap_examples():
    examples, shots = select_rows(_gsm(40), "gsm8k", n_examples=30, n_shots=4, shot_pool=8, seed=1)
    assert len(examples) == 30 and len(shots) == 4
    assert not set(examples["id"]) & set(shots["id"])
    assert not set(examples["question"]) & set(shots["question"])


def test_shot_pool_rows_are_never_examples_whatever_n_shots():
    pool_rows = set(_gsm(40)["source_index"])
    a, shots_a = select_rows(_gsm(40), "gsm8k", n_examples=None, n_shots=1, shot_pool=8, seed=1)
    b, shots_b = select_rows(_gsm(40), "gsm8k", n_examples=None, n_shots=8, shot_pool=8, seed=1)
    pd.testing.assert_frame_equal(a, b)  # examples do not depend on n_shots
    assert len(a) == 32
    assert set(b["source_index"]) | set(shots_b["source_index"]) == pool_rows


def test_repeated_and_long_questions_are_dropped():
    rows = _gsm(10)
    rows = pd.concat([rows, rows.iloc[[0]].assign(source_index=10)], ignore_index=True)
    rows.loc[3, "question"] = "x" * 500
    examples, shots = select_rows(
        rows, "gsm8k", n_examples=None, n_shots=0, shot_pool=0, seed=0, max_question_chars=100
    )
    assert len(examples) == 9
    assert examples["question"].is_unique
    assert 3 not in set(examples["source_index"])


def test_too_few_rows_is_a_clear_error():
    with pytest.raises(ValueError, match=r"gsm8k_raw: 20 gsm8k examples requested but only 14"):
        select_rows(_gsm(20), "gsm8k", n_examples=20, n_shots=2, shot_pool=6, seed=0)


def test_choice_shots_are_balanced():
    logic = normalize_raw(
        pd.DataFrame(
            {
                "question": [f"q{i}" for i in range(30)],
                "answer": ["Yes"] * 25 + ["No"] * 5,
                "choices": [["Yes", "No"]] * 30,
            }
        ),
        "logic",
    )
    _, shots = select_rows(logic, "logic", n_examples=5, n_shots=4, shot_pool=20, seed=0)
    assert sorted(shots["answer"]) == ["No", "No", "Yes", "Yes"]
    assert shots["answer"].tolist()[0] != shots["answer"].tolist()[1]


def test_examples_can_be_balanced_by_answer():
    logic = normalize_raw(
        pd.DataFrame(
            {
                "question": [f"q{i}" for i in range(60)],
                "answer": ["Yes"] * 40 + ["No"] * 20,
                "choices": [["Yes", "No"]] * 60,
            }
        ),
        "logic",
    )
    plain, _ = select_rows(logic, "logic", n_examples=30, n_shots=2, shot_pool=4, seed=0)
    even, shots = select_rows(
        logic, "logic", n_examples=30, n_shots=2, shot_pool=4, seed=0, balance_answers=True
    )
    assert even["answer"].value_counts().to_dict() == {"Yes": 15, "No": 15}
    assert plain["answer"].value_counts()["Yes"] > 15
    assert not set(even["id"]) & set(shots["id"])
    # when one answer runs out, the rest is filled with the others
    most, _ = select_rows(
        logic, "logic", n_examples=50, n_shots=2, shot_pool=4, seed=0, balance_answers=True
    )
    assert len(most) == 50


def test_selection_is_deterministic_and_seeded():
    a, sa = build_examples({"gsm8k": _gsm(50)}, _config(n_examples=20))
    b, sb = build_examples({"gsm8k": _gsm(50)}, _config(n_examples=20))
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(sa, sb)
    c, _ = build_examples({"gsm8k": _gsm(50)}, {**_config(n_examples=20), "seed": 5})
    assert a["id"].tolist() != c["id"].tolist()


def test_split_is_per_benchmark_and_follows_the_fraction():
    examples, _ = build_examples(
        {"gsm8k": _gsm(60), "logic": _logic(40)}, _config(n_examples=30, select_fraction=0.4)
    )
    counts = examples.groupby(["benchmark", "split"]).size().to_dict()
    assert counts == {
        ("gsm8k", "heldout"): 18,
        ("gsm8k", "select"): 12,
        ("logic", "heldout"): 18,
        ("logic", "select"): 12,
    }
    again = assign_split(examples, 0.4, seed=0)
    assert again.tolist() == examples["split"].tolist()
    other = assign_split(examples, 0.4, seed=1)
    assert other.tolist() != examples["split"].tolist()
    assert set(assign_split(examples, 1.0, 0)) == {"select"}
    with pytest.raises(ValueError, match="select_fraction"):
        assign_split(examples, 1.5, 0)


def test_examples_schema_and_ids():
    examples, _ = build_examples({"gsm8k": _gsm(20), "logic": _logic(20)}, _config())
    assert list(examples.columns) == EXAMPLE_COLUMNS
    assert examples["id"].str.fullmatch(r"(gsm8k|logic)-\d{5}").all()
    assert examples["id"].is_unique
    row = examples[examples["benchmark"] == "logic"].iloc[0]
    assert row["answer_type"] == "choice" and list(row["choices"]) == ["Yes", "No"]


def test_benchmark_with_zero_examples_is_left_out():
    config = _config()
    config["benchmarks"]["logic"]["n_examples"] = 0
    examples, shots = build_examples({"gsm8k": _gsm(20), "logic": _logic(20)}, config)
    assert set(examples["benchmark"]) == {"gsm8k"} == set(shots["benchmark"])


def test_prompts_share_shots_and_end_before_the_answer():
    examples, shots = build_examples({"gsm8k": _gsm(30), "logic": _logic(30)}, _config())
    prompts = build_prompts(examples, shots)
    assert list(prompts.columns) == PROMPT_COLUMNS
    assert prompts["prompt"].str.endswith("\nAnswer:").all()
    assert (prompts["target"] == " " + prompts["answer"]).all()
    for benchmark, group in prompts.groupby("benchmark"):
        bench_shots = shots[shots["benchmark"] == benchmark]
        block = "".join(
            f"Question: {q}\nAnswer: {a}\n\n"
            for q, a in zip(bench_shots["question"], bench_shots["answer"])
        )
        assert group["prompt"].str.startswith(block).all()
        for question, prompt in zip(
            examples.set_index("id").loc[group["id"], "question"], group["prompt"]
        ):
            assert prompt == block + f"Question: {question}\nAnswer:"


def test_choice_targets_and_chance():
    examples, shots = build_examples({"gsm8k": _gsm(30), "logic": _logic(30)}, _config())
    prompts = build_prompts(examples, shots).set_index("id")
    logic = prompts[prompts["benchmark"] == "logic"]
    assert all(list(t) == [" Yes", " No"] for t in logic["choice_targets"])
    assert all(t in list(c) for t, c in zip(logic["target"], logic["choice_targets"]))
    assert (logic["chance"] == 0.5).all()
    gsm = prompts[prompts["benchmark"] == "gsm8k"]
    assert all(len(t) == 0 for t in gsm["choice_targets"])
    assert all(len(c) == 0 for c in gsm["choices"])
    assert (gsm["chance"] == 0.0).all()


def test_format_prompt_options():
    text = format_prompt(
        "Is it?",
        ["Yes", "No"],
        [("Was it?", ["Yes", "No"], "No")],
        {"show_choices": True, "question_prefix": "Q: ", "answer_prefix": "A:"},
    )
    assert text == "Q: Was it?\nChoices: Yes, No\nA: No\n\nQ: Is it?\nChoices: Yes, No\nA:"
    assert format_prompt("2+2?", [], []) == "Question: 2+2?\nAnswer:"


def test_prompts_refuse_overlapping_shots():
    examples, shots = build_examples({"gsm8k": _gsm(30)}, _config())
    with pytest.raises(ValueError, match="few-shot rows also appear as examples"):
        build_prompts(examples, pd.concat([shots, shots.assign(id=examples["id"].iloc[:3].values)]))


def test_template_is_carried_to_examples_shots_and_prompts():
    examples, shots = build_examples({"gsm8k": _gsm(30), "logic": _logic(30)}, _config())
    assert list(shots.columns) == SHOT_COLUMNS
    prompts = build_prompts(examples, shots)
    gsm = examples[examples["benchmark"] == "gsm8k"]
    # "What is i plus i?" was made from template plus-(i % 4)
    assert all(
        t == f"plus-{int(q.split()[2]) % 4}" for q, t in zip(gsm["question"], gsm["template"])
    )
    assert prompts["template"].tolist()[: len(gsm)] == gsm["template"].tolist()
    assert prompts.loc[prompts["benchmark"] == "logic", "template"].isna().all()
    # clusters: the template, else the row's own id
    cluster = clusters(prompts)
    gsm_rows = prompts["benchmark"] == "gsm8k"
    assert cluster[gsm_rows].nunique() == 4
    assert (cluster[gsm_rows] == "gsm8k/" + prompts.loc[gsm_rows, "template"]).all()
    logic = prompts["benchmark"] == "logic"
    assert (cluster[logic] == prompts.loc[logic, "id"]).all()
    assert clusters(prompts.drop(columns="template")).tolist() == prompts["id"].tolist()


def test_answer_only_is_the_default_and_generation_prompt_is_the_prompt():
    examples, shots = build_examples({"gsm8k": _gsm(30), "logic": _logic(30)}, _config())
    prompts = build_prompts(examples, shots)
    assert (prompts["prompt_format"] == "answer_only").all()
    assert (prompts["generation_prompt"] == prompts["prompt"]).all()
    assert not prompts["prompt"].str.contains("####").any()


def _worked(n_shots=2, **fmt):
    config = _config(n_shots=n_shots)
    config["benchmarks"]["gsm8k"]["worked_solutions"] = True
    examples, shots = build_examples({"gsm8k": _gsm(30), "logic": _logic(30)}, config)
    return examples, shots, build_prompts(examples, shots, fmt or None, config["benchmarks"])


def test_worked_solution_prompts_end_with_the_gold_solution_before_the_target():
    examples, shots, prompts = _worked()
    gsm = prompts[prompts["benchmark"] == "gsm8k"]
    assert (gsm["prompt_format"] == "worked_solution").all()
    assert (prompts.loc[prompts["benchmark"] == "logic", "prompt_format"] == "answer_only").all()
    block = "".join(
        f"Question: {q}\nAnswer: {sol}\n#### {a}\n\n"
        for q, a, sol in zip(
            shots.loc[shots["benchmark"] == "gsm8k", "question"],
            shots.loc[shots["benchmark"] == "gsm8k", "answer"],
            shots.loc[shots["benchmark"] == "gsm8k", "solution"],
        )
    )
    ex = examples.set_index("id")
    for row in gsm.itertuples():
        question, solution = ex.loc[row.id, "question"], ex.loc[row.id, "solution"]
        assert row.generation_prompt == block + f"Question: {question}\nAnswer:"
        assert row.prompt == row.generation_prompt + f" {solution}\n####"
        assert row.prompt.startswith(row.generation_prompt)
        assert row.target == f" {row.answer}"  # the final answer, after the solution
        i = int(question.split()[2])
        assert solution == f"{i}+{i}={2 * i}"  # the example's own gold solution


def test_worked_solutions_marker_is_a_parameter():
    _, _, prompts = _worked(answer_marker="The answer is")
    gsm = prompts[prompts["benchmark"] == "gsm8k"]
    assert gsm["prompt"].str.endswith("\nThe answer is").all()
    assert gsm["prompt"].str.contains(r"\nThe answer is \d+\n\nQuestion:").all()


def test_global_worked_solutions_skip_benchmarks_without_solutions(caplog):
    examples, shots = build_examples({"gsm8k": _gsm(30), "logic": _logic(30)}, _config())
    with caplog.at_level("WARNING"):
        prompts = build_prompts(examples, shots, {"worked_solutions": True})
    assert "logic provide no worked solutions" in caplog.text
    formats = prompts.groupby("benchmark")["prompt_format"].unique().map(list).to_dict()
    assert formats == {"gsm8k": ["worked_solution"], "logic": ["answer_only"]}
    # per benchmark false wins over the global true
    config = _config()
    config["benchmarks"]["gsm8k"]["worked_solutions"] = False
    prompts = build_prompts(examples, shots, {"worked_solutions": True}, config["benchmarks"])
    assert (prompts["prompt_format"] == "answer_only").all()


def test_worked_solutions_where_rows_have_none_is_an_error():
    config = _config()
    config["benchmarks"]["logic"]["worked_solutions"] = True
    examples, shots = build_examples({"gsm8k": _gsm(30), "logic": _logic(30)}, config)
    with pytest.raises(
        ValueError, match=r"benchmarks\.logic\.worked_solutions is true but .* logic rows"
    ):
        build_prompts(examples, shots, None, config["benchmarks"])
    # some GSM8K rows without a worked part ("#### 4"): also an error, even when set globally
    gsm = _gsm(30)
    gsm.loc[::2, "solution"] = None
    examples, shots = build_examples({"gsm8k": gsm}, _config())
    with pytest.raises(
        ValueError, match=r"prompt_format\.worked_solutions is true but \d+ of 13 gsm8k"
    ):
        build_prompts(examples, shots, {"worked_solutions": True})
