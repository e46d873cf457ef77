"""generation.py on tiny random models: greedy generation, its stop string and budget, and
the answer extracted from a generated solution."""

import pandas as pd
import pytest

from sae_reasoning.benchmarks.answers import answers_match, extract_answer
from sae_reasoning.benchmarks.parsing import parse_number
from sae_reasoning.generation import (
    SOLVED_COLUMNS,
    GenerationSettings,
    cut_at_stop,
    generate,
    solve,
)
from tests.tiny import FAMILIES

PROMPTS = [
    "Question: What is 2 + 2?\nAnswer: 2 + 2 = 4\n#### 4\n\nQuestion: What is 3 + 1?\nAnswer:",
    "Question: What is 12 + 5?\nAnswer:",
    "Question: How many apples does Tom have if he has 3 and then gets 4 more?\nAnswer:",
]


def _free(lm, budget=30):
    """What the model writes with no stop string."""
    return generate(lm, PROMPTS, GenerationSettings(max_new_tokens=budget, stop=(), batch_size=3))


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_left_padded_generation_equals_one_prompt_at_a_time(
    tiny_lms, family, one_torch_thread
):
    lm = tiny_lms[family]
    batched = _free(lm, 12)
    single = [
        generate(lm, [p], GenerationSettings(max_new_tokens=12, stop=(), batch_size=1))[0]
        for p in PROMPTS
    ]
    assert batched == single
    assert all(n <= 12 for _, n in batched)


def test_generation_stops_at_the_budget(tiny_lms, one_torch_thread):
    lm = tiny_lms["gpt_neox"]
    short, long = _free(lm, 5), _free(lm, 30)
    for (text5, n5), (text30, n30) in zip(short, long):
        assert n5 <= 5 and n30 <= 30
        assert text30.startswith(text5)  # greedy: the same tokens, fewer of them
    assert max(n for _, n in long) == 30  # without a stop, the whole budget is used


def _stop_inside(text: str) -> str | None:
    """A 3-character printable stop string that first occurs inside `text` (not at its start)."""
    for k in range(2, len(text) - 3):
        piece = text[k : k + 3]
        if piece.isascii() and piece.isprintable() and text.find(piece) == k:
            return piece
    return None


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "phi"])
def test_generation_stops_at_the_stop_string(tiny_lms, family, one_torch_thread):
    """Plant a stop string in what the model writes anyway: generation ends there, the text
    is cut before it, and fewer tokens are generated than the budget allows."""
    lm = tiny_lms[family]
    free = _free(lm, 30)
    stops = [_stop_inside(text) for text, _ in free]
    row = next(i for i, s in enumerate(stops) if s is not None)
    text, n_free = free[row]
    stop = stops[row]
    [(cut, n_cut)] = generate(
        lm, [PROMPTS[row]], GenerationSettings(max_new_tokens=30, stop=(stop,))
    )
    assert cut == text[: text.find(stop)]
    assert stop not in cut
    assert n_cut < n_free == 30


def test_a_prompt_at_the_context_limit(tiny_lms, one_torch_thread):
    lm = tiny_lms["llama"]
    limit = lm.model.config.max_position_embeddings
    unit = "Question: what is the total?\n"
    n_unit = len(lm.tokenizer(unit, add_special_tokens=False)["input_ids"])
    near = unit * ((limit - 6) // n_unit)  # a few tokens of room left
    room = limit - len(lm.tokenizer(near)["input_ids"])
    [(_, n)] = generate(lm, [near], GenerationSettings(max_new_tokens=50, stop=()))
    assert 0 < n <= room  # the budget shrinks to what fits
    with pytest.raises(ValueError, match="the model's whole context"):
        generate(lm, [unit * (limit // n_unit + 2)], GenerationSettings(max_new_tokens=5))


def test_solve_extracts_and_scores_each_row_in_table_order(tiny_lms, one_torch_thread):
    lm = tiny_lms["gpt_neox"]
    settings = GenerationSettings(max_new_tokens=24, batch_size=2)
    texts = generate(lm, PROMPTS, settings)
    said = [extract_answer(t) for t, _ in texts]
    # plant: the gold answer of row 0 and 2 is what the model says (text answers where it
    # says no number), row 1's is something else
    answers, types = [], []
    for i, s in enumerate(said):
        s = s if s is not None else extract_answer(texts[i][0], "text") or "?"
        types.append("numeric" if parse_number(s) is not None else "text")
        answers.append(s if i != 1 else "123456789")
    types[1] = "numeric"
    table = pd.DataFrame(
        {"generation_prompt": PROMPTS, "answer": answers, "answer_type": types}, index=[10, 11, 12]
    )
    solved = solve(lm, table, settings)
    assert list(solved.columns) == SOLVED_COLUMNS
    assert solved["row"].tolist() == [0, 1, 2]
    assert solved["generated"].tolist() == [t for t, _ in texts]
    assert solved["generated_tokens"].tolist() == [n for _, n in texts]
    assert solved["correct"].tolist() == [True, False, True]
    for row in solved.itertuples():
        assert row.extracted_answer == extract_answer(row.generated, types[row.row])
        assert row.correct == (
            row.extracted_answer is not None
            and answers_match(row.extracted_answer, answers[row.row], types[row.row])
        )


def test_solve_needs_the_generation_prompt():
    with pytest.raises(ValueError, match="generation_prompt"):
        solve(None, pd.DataFrame({"prompt": ["q"], "answer": ["1"], "answer_type": ["numeric"]}))


def test_settings_from_parameters():
    assert GenerationSettings.from_params(None) == GenerationSettings()
    s = GenerationSettings.from_params({"max_new_tokens": 64, "stop": "\n\n", "batch_size": 4})
    assert s.stop == ("\n\n",) and s.max_new_tokens == 64 and s.batch_size == 4
    assert GenerationSettings.from_params({"stop": None}).stop == ()
    assert GenerationSettings.from_params({"stop": ["a", "b"]}).stop == ("a", "b")
    assert "batch_size" not in s.key()  # batching does not change the text
    with pytest.raises(ValueError, match="unknown solution-generation setting"):
        GenerationSettings.from_params({"max_tokens": 3})
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)


def test_cut_at_stop():
    assert cut_at_stop(" 2 + 2 = 4\n#### 4\n\nQuestion: next", ["\n\nQuestion:"]) == (
        " 2 + 2 = 4\n#### 4",
        True,
    )
    assert cut_at_stop("a b c", ["x", "b", " c"]) == ("a ", True)
    assert cut_at_stop("abc", []) == ("abc", False)
