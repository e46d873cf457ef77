"""A small prompts table in the data_loading contract, for tests of later stages."""

import pandas as pd

SHOTS = "Question: What is 2 + 2?\nAnswer: 4\n\nQuestion: What is 3 + 5?\nAnswer: 8\n\n"


def tiny_prompts(n_open: int = 6, n_choice: int = 4) -> pd.DataFrame:
    rows = []
    for i in range(n_open):
        a, b = i + 1, 2 * i + 3
        rows.append(
            dict(
                id=f"arith-{i:03d}",
                benchmark="arith",
                prompt=SHOTS + f"Question: What is {a} + {b}?\nAnswer:",
                target=f" {a + b}",
                answer=str(a + b),
                answer_type="numeric",
                choices=None,
                choice_targets=[],
                chance=0.0,
                split="select" if i % 2 else "heldout",
            )
        )
    logic_shots = "Question: Is 3 more than 2?\nAnswer: yes\n\n"
    for i in range(n_choice):
        yes = i % 2 == 0
        rows.append(
            dict(
                id=f"logic-{i:03d}",
                benchmark="logic",
                prompt=logic_shots
                + f"Question: Is {i + 5} more than {i + 4 if yes else i + 9}?\nAnswer:",
                target=" yes" if yes else " no",
                answer="yes" if yes else "no",
                answer_type="choice",
                choices=["yes", "no"],
                choice_targets=[" yes", " no"],
                chance=0.5,
                split="select" if i % 2 else "heldout",
            )
        )
    return pd.DataFrame(rows)
