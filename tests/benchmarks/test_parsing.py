import numpy as np
import pandas as pd
import pytest

from sae_reasoning.benchmarks.answers import answers_match, clean_generation, extract_answer
from sae_reasoning.benchmarks.parsing import (
    NORMALIZED_COLUMNS,
    coerce_choices,
    extract_boxed,
    gsm8k_solution,
    normalize_math_answer,
    normalize_raw,
    parse_gsm8k_answer,
    parse_number,
)


@pytest.mark.parametrize(
    ("solution", "expected"),
    [
        ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
        ("Total is 1,234 dollars.\n#### 1,234", "1234"),
        ("He owes money.\n#### -15", "-15"),
        ("#### 3.50", "3.5"),
        ("#### $12", "12"),
        ("#### 2.0\n", "2"),
        ("a\n#### 1,000,000  ", "1000000"),
        ("#### 0.125", "0.125"),
    ],
)
def test_gsm8k_final_number(solution, expected):
    assert parse_gsm8k_answer(solution) == expected


def test_gsm8k_uses_last_marker():
    assert parse_gsm8k_answer("#### 3 is wrong\nso\n#### 4") == "4"


@pytest.mark.parametrize(
    ("solution", "expected"),
    [
        (r"So $x = \boxed{5}$.", "5"),
        (r"Thus \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"First \boxed{3}, but really \boxed{4}.", "4"),
        (r"Answer: \fbox{12}", "12"),
        (r"Hence $\boxed{\{1, 2\}}$", r"\{1, 2\}"),
        (r"giving $\boxed 7$.", "7"),
        (r"\boxed{\sqrt{2}+\frac{\pi}{4}}", r"\sqrt{2}+\frac{\pi}{4}"),
    ],
)
def test_extract_boxed(solution, expected):
    assert extract_boxed(solution) == expected


@pytest.mark.parametrize(
    ("boxed", "expected"),
    [
        ("5", ("5", "numeric")),
        (r"\frac{1}{2}", ("1/2", "numeric")),
        (r"\dfrac{3}{4}", ("3/4", "numeric")),
        (r"\frac{6}{8}", ("3/4", "numeric")),
        ("0.50", ("0.5", "numeric")),
        (r"-\frac{2}{3}", ("-2/3", "numeric")),
        ("1,000", ("1000", "numeric")),
        (r"50\%", ("50", "numeric")),
        (r"90^\circ", ("90", "numeric")),
        (r"\left( 1, 2 \right)", ("(1,2)", "text")),
        (r"\text{(B)}", ("(B)", "text")),
        (r"x^2 + 1", ("x^2+1", "text")),
    ],
)
def test_normalize_math_answer(boxed, expected):
    assert normalize_math_answer(boxed) == expected


def test_parse_number_forms():
    assert parse_number("3/4") == parse_number("0.75") == parse_number(r"\frac{3}{4}")
    assert parse_number("- 5") == -5
    assert parse_number("42.") == 42
    assert parse_number("forty") is None
    assert parse_number("1,5") is None
    assert parse_number("1/0") is None


def test_coerce_choices_accepts_lists_arrays_json_and_missing():
    assert coerce_choices(["Yes", "No"]) == ["Yes", "No"]
    assert coerce_choices(np.array(["a", "b"], dtype=object)) == ["a", "b"]
    assert coerce_choices('["x", "y"]') == ["x", "y"]
    assert coerce_choices(None) == []
    assert coerce_choices(float("nan")) == []


def test_normalize_gsm8k_table():
    raw = pd.DataFrame({"question": ["Q1?", " Q2? "], "answer": ["a\n#### 1,200", "#### -3"]})
    out = normalize_raw(raw, "gsm8k")
    assert out["answer"].tolist() == ["1200", "-3"]
    assert out["question"].tolist() == ["Q1?", "Q2?"]
    assert set(out["answer_type"]) == {"numeric"}
    assert out["source_index"].tolist() == [0, 1]


def test_normalize_math_table():
    raw = pd.DataFrame(
        {
            "problem": ["What is 1/2 + 1/4?", "Simplify x."],
            "solution": [r"It is $\boxed{\frac{3}{4}}$.", r"$\boxed{x}$"],
            "level": ["Level 1", "Level 2"],
            "type": ["Prealgebra", "Algebra"],
        }
    )
    out = normalize_raw(raw, "math")
    assert out["answer"].tolist() == ["3/4", "x"]
    assert out["answer_type"].tolist() == ["numeric", "text"]


def test_normalize_logic_table_with_and_without_choices():
    raw = pd.DataFrame(
        {
            "question": ["Is it so?", "Which?", "How many?"],
            "answer": ["yes.", "B", "4"],
            "choices": [["Yes", "No"], ["red", "blue", "green"], None],
        }
    )
    out = normalize_raw(raw, "logic")
    assert out["answer"].tolist() == ["Yes", "blue", "4"]
    assert out["answer_type"].tolist() == ["choice", "choice", "numeric"]
    assert out["choices"].tolist() == [["Yes", "No"], ["red", "blue", "green"], []]

    no_column = normalize_raw(raw.drop(columns="choices"), "logic")
    assert no_column["answer_type"].tolist() == ["text", "text", "numeric"]


def test_malformed_gsm8k_rows_are_all_named():
    raw = pd.DataFrame(
        {
            "question": ["ok", "no marker", "", "not a number"],
            "answer": ["#### 1", "the answer is 3", "#### 2", "#### three"],
        }
    )
    with pytest.raises(ValueError) as err:
        normalize_raw(raw, "gsm8k")
    msg = str(err.value)
    assert "gsm8k_raw row 1: answer has no '#### <number>' final line" in msg
    assert "gsm8k_raw row 2: question is empty" in msg
    assert "gsm8k_raw row 3: the '####' final line is not a number" in msg
    assert "row 0" not in msg
    assert "3 of 4 rows" in msg


def test_error_lists_only_the_first_few_rows():
    raw = pd.DataFrame({"question": ["q"] * 20, "answer": ["no marker"] * 20})
    with pytest.raises(ValueError) as err:
        normalize_raw(raw, "gsm8k")
    msg = str(err.value)
    assert "row 4:" in msg and "row 5:" not in msg
    assert "and 15 more" in msg


def test_malformed_math_row_names_row():
    raw = pd.DataFrame(
        {
            "problem": ["p", "p2"],
            "solution": [r"\boxed{1}", "the answer is 2"],
            "level": ["Level 1"] * 2,
            "type": ["Algebra"] * 2,
        }
    )
    with pytest.raises(ValueError, match=r"math_raw row 1: solution has no \\boxed"):
        normalize_raw(raw, "math")


def test_unbalanced_boxed_is_malformed():
    raw = pd.DataFrame(
        {
            "problem": ["p"],
            "solution": [r"\boxed{\frac{1}{2}"],
            "level": ["Level 1"],
            "type": ["Algebra"],
        }
    )
    with pytest.raises(ValueError, match="math_raw row 0: .*unbalanced"):
        normalize_raw(raw, "math")


def test_logic_answer_not_among_choices():
    raw = pd.DataFrame(
        {
            "question": ["q", "q2"],
            "answer": ["Yes", "Maybe"],
            "choices": [["Yes", "No"], ["Yes", "No"]],
        }
    )
    with pytest.raises(ValueError, match=r"logic_raw row 1: answer 'Maybe' is not among choices"):
        normalize_raw(raw, "logic")


def test_missing_native_column_is_named():
    raw = pd.DataFrame({"problem": ["p"], "solution": [r"\boxed{1}"]})
    expected = r"math_raw: missing native column\(s\) \['level', 'type'\]"
    with pytest.raises(ValueError, match=expected):
        normalize_raw(raw, "math")


def test_custom_entry_name_in_errors():
    raw = pd.DataFrame({"question": ["q"], "answer": [None]})
    with pytest.raises(ValueError, match="my_gsm row 0: answer is empty"):
        normalize_raw(raw, "gsm8k", name="my_gsm")


@pytest.mark.parametrize(
    ("generation", "answer", "answer_type", "expected"),
    [
        (" 42\n\nQuestion: next", "42", "numeric", True),
        (" 42.0", "42", "numeric", True),
        (" 1,234", "1234", "numeric", True),
        (" 42 apples", "42", "numeric", True),
        (" 0.75", "3/4", "numeric", True),
        (" 43", "42", "numeric", False),
        (" -4", "4", "numeric", False),
        ("\n42", "42", "numeric", False),
        (" yes", "Yes", "choice", True),
        (" No", "Yes", "choice", False),
        (r" \frac{\sqrt{3}}{2}", r"\frac{\sqrt{3}}{2}", "text", True),
        (" Mother-in-law.", "mother-in-law", "text", True),
    ],
)
def test_answers_match(generation, answer, answer_type, expected):
    assert answers_match(generation, answer, answer_type) is expected


def test_clean_generation_cuts_at_newline():
    assert clean_generation(" 12\nQuestion:") == "12"


def test_normalized_rows_carry_template_and_solution():
    raw = pd.DataFrame(
        {
            "question": ["q1", "q2", "q3"],
            "answer": ["Step one.\n\nStep two: 3 + 4 = 7\n#### 7", "#### 2", "x\n#### 3"],
            "template": ["t1", None, 12],
        }
    )
    rows = normalize_raw(raw, "gsm8k")
    assert list(rows.columns) == NORMALIZED_COLUMNS
    assert rows["template"].tolist()[0] == "t1" and pd.isna(rows["template"].tolist()[1])
    assert rows["template"].tolist()[2] == "12"  # ids are text
    assert rows["solution"].tolist()[0] == "Step one.\nStep two: 3 + 4 = 7"  # no blank lines
    assert pd.isna(rows["solution"].tolist()[1])  # "#### 2": no worked part
    # no template column: null; MATH and logic have no separable solution
    assert normalize_raw(raw.drop(columns="template"), "gsm8k")["template"].isna().all()
    math = normalize_raw(
        pd.DataFrame(
            {
                "problem": ["p"],
                "solution": ["so $\\boxed{4}$"],
                "level": ["Level 1"],
                "type": ["Algebra"],
            }
        ),
        "math",
    )
    assert math["solution"].isna().all() and math["template"].isna().all()


def test_gsm8k_solution():
    assert gsm8k_solution("a = 1\nb = 2\n#### 3") == "a = 1\nb = 2"
    assert gsm8k_solution("#### 3") is None
    assert gsm8k_solution("no marker") is None


@pytest.mark.parametrize(
    ("text", "answer_type", "expected"),
    [
        (" 3 + 4 = 7 apples.\n#### 7\n", "numeric", "7"),
        (" first 2, then 5.\n#### 1,000 apples\n#### 9", "numeric", "1,000 apples"),  # first marker
        (" 12 - 3 = 9 so she has 9 left.", "numeric", "9"),  # no marker: the last number
        (" he pays $1,234.50 in total", "numeric", "1,234.50"),
        (" x = -3", "numeric", "-3"),
        (" half of it is 3/4", "numeric", "3/4"),
        (" no number at all ####", "numeric", None),
        (" nothing", "numeric", None),
        (" they are cousins.\n#### Yes", "choice", "Yes"),
        (" so the answer is\nNo", "choice", "No"),  # no marker: the last line
        ("", "text", None),
    ],
)
def test_extract_answer(text, answer_type, expected):
    assert extract_answer(text, answer_type) == expected


def test_extracted_answers_match_the_gold_answer():
    assert answers_match(extract_answer(" 2 * 500 = 1000\n#### 1,000 apples"), "1000", "numeric")
    assert answers_match(extract_answer(" so 0.50 dollars"), "0.5", "numeric")
    assert not answers_match(extract_answer(" 2 * 500 = 1000\n#### 999"), "1000", "numeric")
    assert answers_match(extract_answer(" so\n#### yes.", "choice"), "Yes", "choice")
    assert extract_answer(" so it is\nANSWER 4", "numeric", marker="ANSWER") == "4"


@pytest.mark.parametrize("raw", [pd.DataFrame(), pd.DataFrame({"question": [], "answer": []})])
def test_empty_raw_table_says_so(raw):
    # an empty file loads as a table without rows (and without columns): issue 14 item 8
    with pytest.raises(ValueError, match=r"^gsm8k: the raw table is empty \(dataset `my_gsm`\)"):
        normalize_raw(raw, "gsm8k", name="my_gsm")
    with pytest.raises(
        ValueError, match=r"^math: the raw table is empty; the benchmark needs at least one row$"
    ):
        normalize_raw(pd.DataFrame(), "math")
