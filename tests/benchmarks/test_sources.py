import datasets
import pandas as pd
import pytest

from sae_reasoning.benchmarks.parsing import NATIVE_COLUMNS, normalize_raw
from sae_reasoning.benchmarks.sources import (
    LOGIC_CHOICES,
    as_dataframe,
    entry_template,
    generate_native,
    load_hf_dataframe,
    split_sizes,
)

MATH_MIX = {
    "basic_arithmetic": {"min_terms": 2, "max_terms": 3, "max_digits": 2, "operators": ["+", "-"]},
    "simple_equations": {"max_terms": 2},
    "gcd": {"max_value": 50, "weight": 0.5},
    "dice": {"weight": 0.5},
}


def test_gsm8k_stand_in_has_native_columns_and_worked_solutions():
    raw = generate_native("gsm8k", "gsm_symbolic", size=12, seed=0)
    assert list(raw.columns) == ["question", "answer", "template", "source"]
    assert (raw["source"] == "reasoning-gym gsm_symbolic").all()
    assert len(raw) == 12
    assert raw["answer"].str.contains(r"\n#### -?[\d.]+$").all()
    assert not raw["question"].str.contains("Give the result as your final answer").any()
    assert len(normalize_raw(raw, "gsm8k")) == 12


def test_gsm_symbolic_rows_carry_their_template():
    """gsm_symbolic instantiates ~85 GSM8K templates: rows of one template share an id, and
    the id is the generator that made them (the same variables, the same question frame)."""
    import reasoning_gym

    data = reasoning_gym.create_dataset("gsm_symbolic", size=60, seed=3)
    entries = list(data)
    templates = [entry_template("gsm_symbolic", data, e) for e in entries]
    assert all(t is not None and t.startswith("gsm_symbolic:") for t in templates)
    assert len(set(templates)) < len(templates)  # some templates repeat in 60 rows
    by_template: dict[str, set] = {}
    for t, e in zip(templates, entries):
        by_template.setdefault(t, set()).add(tuple(sorted(e["metadata"]["variables"])))
    assert all(len(v) == 1 for v in by_template.values())  # one template: one variable set
    assert len({next(iter(v)) for v in by_template.values()}) > 0.8 * len(by_template)
    # other tasks have no templates
    gcd = reasoning_gym.create_dataset("gcd", size=3, seed=0)
    assert entry_template("gcd", gcd, gcd[0]) is None

    raw = generate_native("gsm8k", "gsm_symbolic", size=40, seed=2)
    assert raw["template"].str.fullmatch(r"gsm_symbolic:\d{2}").all()
    assert raw["template"].nunique() < 40
    normalized = normalize_raw(raw, "gsm8k")
    assert normalized["template"].tolist() == raw["template"].tolist()
    assert normalized["solution"].notna().all()
    assert not normalized["solution"].str.contains("####").any()
    # a template repeated in the table: its questions share their wording apart from numbers/names
    repeated = raw[raw.duplicated("template", keep=False)].sort_values("template")
    first, second = repeated.iloc[0], repeated.iloc[1]
    assert first["template"] == second["template"]
    a, b = (_words(q) for q in (first["question"], second["question"]))
    assert len(a & b) > 0.5 * min(len(a), len(b))


def _words(question: str) -> set[str]:
    return {w for w in question.lower().split() if w.isalpha()}


def test_tasks_without_templates_have_no_template_column():
    assert "template" not in generate_native("math", MATH_MIX, size=10, seed=1).columns
    assert "template" not in generate_native("logic", "syllogism", size=4, seed=1).columns
    # a mixed GSM8K stand-in: rows of the template-free task get null
    mixed = generate_native("gsm8k", {"gsm_symbolic": {}, "basic_arithmetic": {}}, size=10, seed=1)
    arithmetic = mixed["answer"].str.startswith("####")  # no worked solution
    assert arithmetic.any() and (~arithmetic).any()
    assert mixed.loc[arithmetic, "template"].isna().all()
    assert mixed.loc[~arithmetic, "template"].notna().all()


def test_math_stand_in_fills_level_and_type():
    raw = generate_native("math", MATH_MIX, size=30, seed=1)
    assert list(raw.columns) == [*NATIVE_COLUMNS["math"], "source"]
    assert raw["solution"].str.contains(r"\\boxed\{", regex=True).all()
    assert set(raw["level"]) <= {f"Level {i}" for i in range(1, 6)}
    assert set(raw["type"]) == {"Prealgebra", "Algebra", "Number Theory", "Counting & Probability"}
    counts = raw["type"].value_counts()
    assert counts["Prealgebra"] == counts["Algebra"] == 10  # weights 1 : 1 : 0.5 : 0.5
    # fractions are written as MATH does, and normalise back to the generated answer
    dice = raw[raw["type"] == "Counting & Probability"]
    assert dice["solution"].str.contains(r"\\frac\{", regex=True).all()
    normalized = normalize_raw(raw, "math")
    assert (normalized["answer_type"] == "numeric").all()


def test_math_levels_grow_with_difficulty():
    easy = generate_native(
        "math",
        {"basic_arithmetic": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}},
        10,
        0,
    )
    hard = generate_native(
        "math",
        {"basic_arithmetic": {"min_terms": 5, "max_terms": 5, "min_digits": 3, "max_digits": 3}},
        10,
        0,
    )
    assert set(easy["level"]) == {"Level 1"}
    assert set(hard["level"]) == {"Level 5"}


def test_logic_stand_in_has_closed_choices():
    raw = generate_native("logic", {"syllogism": {"invalid_ratio": 0.5}}, size=40, seed=0)
    assert list(raw.columns) == ["question", "answer", "choices", "source"]
    assert all(list(c) == LOGIC_CHOICES["syllogism"] for c in raw["choices"])
    assert set(raw["answer"]) == {"Yes", "No"}
    normalized = normalize_raw(raw, "logic")
    assert (normalized["answer_type"] == "choice").all()


def test_logic_task_without_known_choices_is_open():
    raw = generate_native("logic", "aiw", size=5, seed=0)
    assert raw["choices"].isna().all()
    assert set(normalize_raw(raw, "logic")["answer_type"]) == {"numeric"}


@pytest.mark.parametrize(
    "benchmark,tasks",
    [
        ("gsm8k", "gsm_symbolic"),
        ("math", MATH_MIX),
        ("logic", ["syllogism", "family_relationships"]),
    ],
)
def test_generation_is_deterministic_in_the_seed(benchmark, tasks):
    a = generate_native(benchmark, tasks, size=20, seed=7)
    b = generate_native(benchmark, tasks, size=20, seed=7)
    c = generate_native(benchmark, tasks, size=20, seed=8)
    pd.testing.assert_frame_equal(a, b)
    first = NATIVE_COLUMNS[benchmark][0]
    assert a[first].tolist() != c[first].tolist()


def test_adding_a_task_keeps_the_rows_of_the_others():
    alone = generate_native("math", {"gcd": {}}, size=10, seed=3)
    mixed = generate_native("math", {"gcd": {"weight": 1}, "lcm": {"weight": 1}}, size=20, seed=3)
    gcd_rows = mixed[mixed["problem"].str.contains("Greatest Common Divisor")]
    assert sorted(gcd_rows["problem"]) == sorted(alone["problem"])


def test_balance_answers_evens_out_labels():
    skewed = generate_native("logic", {"circuit_logic": {}}, size=40, seed=0)
    balanced = generate_native("logic", {"circuit_logic": {"balance_answers": True}}, 40, seed=0)
    assert skewed["answer"].value_counts().max() > 20
    assert balanced["answer"].value_counts().to_dict() == {"0": 20, "1": 20}


def test_one_task_under_several_labels():
    raw = generate_native(
        "math",
        {
            "easy": {"task": "basic_arithmetic", "min_terms": 2, "max_terms": 2, "max_digits": 1},
            "hard": {
                "task": "basic_arithmetic",
                "min_terms": 5,
                "max_terms": 5,
                "min_digits": 3,
                "max_digits": 3,
            },
        },
        size=10,
        seed=0,
    )
    assert raw["level"].value_counts().to_dict() == {"Level 1": 5, "Level 5": 5}
    assert set(raw["type"]) == {"Prealgebra"}


def test_bad_task_configuration_is_reported():
    with pytest.raises(ValueError, match="unknown reasoning-gym task"):
        generate_native("math", {"no_such_task": {}}, 5, 0)
    with pytest.raises(ValueError, match="unknown benchmark"):
        generate_native("mmlu", "gcd", 5, 0)
    with pytest.raises(ValueError, match="non-numeric"):
        generate_native("gsm8k", "family_relationships", 3, 0)


def test_split_sizes():
    assert split_sizes(10, [1, 1, 0.5, 0.5]) == [3, 3, 2, 2]
    assert split_sizes(7, [1]) == [7]
    assert sum(split_sizes(101, [0.2, 0.3, 0.5])) == 101


def test_as_dataframe_accepts_hf_objects():
    frame = pd.DataFrame({"question": ["q1", "q2"], "answer": ["#### 1", "#### 2"]})
    ds = datasets.Dataset.from_pandas(frame)
    pd.testing.assert_frame_equal(as_dataframe(ds), frame)
    pd.testing.assert_frame_equal(as_dataframe(datasets.DatasetDict({"test": ds})), frame)
    two = datasets.DatasetDict({"train": ds, "test": ds})
    with pytest.raises(ValueError, match="2 splits"):
        as_dataframe(two)
    pd.testing.assert_frame_equal(as_dataframe(two, split="test"), frame)
    with pytest.raises(ValueError, match="expected a pandas DataFrame"):
        as_dataframe([1, 2])


def test_load_hf_dataframe_reads_local_jsonl_and_parquet(tmp_path):
    frame = pd.DataFrame(
        {"question": ["q1", "q2"], "answer": ["#### 1", "#### 2"], "extra": [1, 2]}
    )
    frame.to_json(tmp_path / "g.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "g.parquet")
    from_json = load_hf_dataframe(
        "json",
        data_files=str(tmp_path / "g.jsonl"),
        split="train",
        columns=["question", "answer"],
        cache_dir=str(tmp_path / "cache"),
    )
    pd.testing.assert_frame_equal(from_json, frame[["question", "answer"]])
    from_parquet = load_hf_dataframe(
        "parquet",
        data_files={"test": str(tmp_path / "g.parquet")},
        split="test",
        cache_dir=str(tmp_path / "cache"),
    )
    assert from_parquet["answer"].tolist() == ["#### 1", "#### 2"]
    with pytest.raises(ValueError, match="no column"):
        load_hf_dataframe(
            "json",
            data_files=str(tmp_path / "g.jsonl"),
            split="train",
            columns=["problem"],
            cache_dir=str(tmp_path / "cache"),
        )
