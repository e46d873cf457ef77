import pytest
import torch

from sae_reasoning.scoring import (
    accuracy_summary, encode_prompts, greedy_answers, score_conditions, shared_prefix,
)
from tests.prompts_fixture import SHOTS, tiny_prompts
from tests.tiny import FAMILIES


def reference_gold_logprob(lm, bench, ex):
    ids = torch.tensor([bench.prefix + ex.question + ex.answers[ex.gold]])
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), -1)
    n, L = len(ex.answers[ex.gold]), ids.shape[1]
    return sum(logp[L - n - 1 + j, ex.answers[ex.gold][j]].item() for j in range(n))


def test_shared_prefix_is_the_few_shot_block():
    prompts = tiny_prompts()
    arith = prompts[prompts.benchmark == "arith"].prompt.tolist()
    assert shared_prefix(arith) == SHOTS
    # A single prompt: the block ends at its last blank line, the question stays out.
    assert shared_prefix(arith[:1]) == SHOTS


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_scoring_equals_a_plain_forward(tiny_lms, family):
    """Batched, padded, cached-context scoring gives each example's own full-forward numbers."""
    lm = tiny_lms[family]
    encoded = encode_prompts(lm.tokenizer, tiny_prompts())
    scores = score_conditions(lm, encoded, batch_size=3, progress=None)["clean"]
    by_row = scores.set_index("row")
    for bench in encoded:
        for ex in bench.examples:
            assert by_row.loc[ex.row, "gold_logprob"] == pytest.approx(reference_gold_logprob(lm, bench, ex), abs=1e-4)
    assert (scores.kl == 0).all()
    assert set(scores.columns) >= {"id", "benchmark", "split", "gold_logprob", "correct", "chance"}


def test_choice_accuracy_is_argmax_over_choices(tiny_lms):
    lm = tiny_lms["llama"]
    encoded = encode_prompts(lm.tokenizer, tiny_prompts())
    scores = score_conditions(lm, encoded, batch_size=4, progress=None)["clean"].set_index("row")
    for bench in encoded:
        for ex in bench.examples:
            if not ex.is_choice:
                continue
            sums = []
            for ans in ex.answers:
                ids = torch.tensor([bench.prefix + ex.question + ans])
                with torch.no_grad():
                    logp = torch.log_softmax(lm.model(input_ids=ids).logits[0], -1)
                L = ids.shape[1]
                sums.append(sum(logp[L - len(ans) - 1 + j, ans[j]].item() for j in range(len(ans))))
            assert scores.loc[ex.row, "correct"] == (max(range(len(sums)), key=sums.__getitem__) == ex.gold)


def test_greedy_exact_match_agrees_with_generation(tiny_lms):
    """`correct` for open answers is exactly: greedy generation writes the gold answer, then a line break."""
    lm = tiny_lms["gpt2"]
    prompts = tiny_prompts(n_open=8, n_choice=0)
    encoded = encode_prompts(lm.tokenizer, prompts)
    merged = score_conditions(lm, encoded, batch_size=4, progress=None, generate_tokens=6)["clean"]
    generated = greedy_answers(lm, encoded, max_new_tokens=6, batch_size=3)
    assert merged.generated.tolist() == generated.generated.tolist()
    for rec in merged.itertuples():
        assert rec.correct == (rec.generated == prompts.loc[rec.row, "answer"])
    assert accuracy_summary(merged).set_index("benchmark").loc["arith", "n"] == 8


def test_bad_prompts_are_named():
    from tests.tiny import make_tokenizer

    tok = make_tokenizer()
    prompts = tiny_prompts()
    prompts.loc[7, "target"] = " maybe"
    with pytest.raises(ValueError, match=r"prompts row 7 \(logic-001\): target ' maybe' is not one of"):
        encode_prompts(tok, prompts)
    with pytest.raises(ValueError, match="empty"):
        encode_prompts(tok, prompts.iloc[:0])

