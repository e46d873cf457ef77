import pytest
import torch

from sae_reasoning.scoring import encode_prompts, pad_right, score_conditions, shared_prefix
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
            assert by_row.loc[ex.row, "gold_logprob"] == pytest.approx(
                reference_gold_logprob(lm, bench, ex), abs=1e-4
            )
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
            assert scores.loc[ex.row, "correct"] == (
                max(range(len(sums)), key=sums.__getitem__) == ex.gold
            )


def test_greedy_exact_match_agrees_with_generation(tiny_lms):
    """`correct` for open answers is exactly: greedy generation writes the gold answer, then a
    line break."""
    lm = tiny_lms["gpt2"]
    prompts = tiny_prompts(n_open=8, n_choice=0)
    encoded = encode_prompts(lm.tokenizer, prompts)
    merged = score_conditions(lm, encoded, batch_size=4, progress=None, generate_tokens=6)["clean"]
    # The greedy answers do not depend on the batching (other batches, other padding).
    generated = score_conditions(lm, encoded, batch_size=3, progress=None, generate_tokens=6)[
        "clean"
    ]
    assert merged.generated.tolist() == generated.generated.tolist()
    for rec in merged.itertuples():
        assert rec.correct == (rec.generated == prompts.loc[rec.row, "answer"])
    assert merged.groupby("benchmark").size().loc["arith"] == 8


def test_bad_prompts_are_named():
    from tests.tiny import make_tokenizer

    tok = make_tokenizer()
    prompts = tiny_prompts()
    prompts.loc[7, "target"] = " maybe"
    with pytest.raises(
        ValueError, match=r"prompts row 7 \(logic-001\): target ' maybe' is not one of"
    ):
        encode_prompts(tok, prompts)
    with pytest.raises(ValueError, match="empty"):
        encode_prompts(tok, prompts.iloc[:0])


@pytest.mark.parametrize("family", FAMILIES)
def test_partial_forward_from_a_recorded_residual_equals_the_full_forward(tiny_lms, family):
    from sae_reasoning.models.hooks import patch_residual, recording
    from sae_reasoning.models.partial_forward import start_at

    lm = tiny_lms[family]
    ids, mask = pad_right([[5, 9, 30, 31, 7], [12, 40, 3]], lm.tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        with recording(lm.model, [1], stop=False) as acts:
            full = lm.model(input_ids=ids, attention_mask=mask).logits
        resid = acts[1]
        # Blocks 0..1 poisoned with NaN: the partial pass must not run them.
        from sae_reasoning.models.hooks import transformer_blocks

        lower = [p for b in transformer_blocks(lm.model)[:2] for p in b.parameters()]
        saved = [p.clone() for p in lower]
        try:
            for p in lower:
                p.fill_(float("nan"))
            with start_at(lm.model, 1, resid):
                part = lm.model(input_ids=ids, attention_mask=mask).logits
        finally:
            for p, v in zip(lower, saved):
                p.copy_(v)
        # An intervention at block 1 applies to the injected residual exactly as in a full pass.
        shift = lambda h: h + torch.linspace(-1, 1, h.shape[-1])  # noqa: E731  (not constant: LayerNorm removes that)
        with patch_residual(lm.model, 1, shift):
            full_shift = lm.model(input_ids=ids, attention_mask=mask).logits
        with start_at(lm.model, 1, resid), patch_residual(lm.model, 1, shift):
            part_shift = lm.model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(part[real], full[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(part_shift[real], full_shift[real], atol=1e-5, rtol=1e-5)
    assert (full_shift - full)[real].abs().max() > 1e-3
    # The blocks are themselves again afterwards.
    with torch.no_grad():
        torch.testing.assert_close(lm.model(input_ids=ids, attention_mask=mask).logits, full)


@pytest.mark.parametrize("family", FAMILIES)
def test_scoring_from_the_sae_layer_equals_scoring_the_whole_model(tiny_lms, family):
    """Ablations that start at the SAE's layer (cached contexts + recorded residual) give the
    full numbers."""
    from sae_reasoning.causal.splice import FeatureAblation, condition
    from tests.causal.test_splice import LAYER, random_sae

    lm = tiny_lms[family]
    sae = random_sae()
    encoded = encode_prompts(lm.tokenizer, tiny_prompts(n_open=4, n_choice=4))
    conds = {
        f"f{k}": condition(lm.model, LAYER, FeatureAblation(sae, list(range(k)), "zero"))
        for k in (3, 64)
    }
    full = score_conditions(lm, encoded, conds, batch_size=3, progress=None)
    part = score_conditions(lm, encoded, conds, batch_size=3, progress=None, start_layer=LAYER)
    for name in ("clean", *conds):
        assert part[name].gold_logprob.tolist() == pytest.approx(
            full[name].gold_logprob.tolist(), abs=1e-4
        )
        assert part[name].correct.tolist() == full[name].correct.tolist()
        assert part[name].kl.tolist() == pytest.approx(full[name].kl.tolist(), abs=1e-4)
    assert (full["f64"].gold_logprob - full["clean"].gold_logprob).abs().max() > 1e-3


def _bare_prompts(n=3):
    """Prompts of a benchmark with no shared block: the questions start at position 0."""
    return tiny_prompts(n_open=n, n_choice=0).assign(
        benchmark="bare", prompt=lambda d: d.prompt.str.replace(SHOTS, "", regex=False)
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_ablation_at_all_positions_equals_one_uncached_forward(tiny_lms, family):
    """positions='all': the rebuilt contexts give exactly the numbers of the whole sequence run
    in one plain forward with the intervention at every position but position 0; mean and
    resample ablation with their per-benchmark, per-position-type select references."""
    import pandas as pd

    from sae_reasoning.causal.references import AblationReferences
    from sae_reasoning.causal.splice import DirectionControl, FeatureAblation, condition
    from sae_reasoning.models.hooks import patch_residual
    from tests.causal.test_splice import LAYER, random_sae

    lm = tiny_lms[family]
    sae = random_sae()
    # Two select examples per benchmark at least: resample draws from another one (select rows too).
    prompts = pd.concat([tiny_prompts(n_open=4, n_choice=4), _bare_prompts(4)], ignore_index=True)
    encoded = encode_prompts(lm.tokenizer, prompts)
    assert [len(b.prefix) > 0 for b in encoded] == [True, True, False]
    refs = AblationReferences.build(lm, sae, LAYER, encoded, batch_size=2, positions="all")
    feats = list(range(0, 256, 3))
    fns = {
        "mean": FeatureAblation(sae, feats, "mean", references=refs),
        "resample": FeatureAblation(sae, feats, "resample", references=refs, seed=4),
        "direction": DirectionControl(sae, list(range(50)), seed=1),
    }
    conds = {k: condition(lm.model, LAYER, fn) for k, fn in fns.items()}
    got = score_conditions(
        lm, encoded, conds, batch_size=2, progress=None, start_layer=LAYER, positions="all"
    )
    answer = score_conditions(lm, encoded, conds, batch_size=2, progress=None, start_layer=LAYER)

    def uncached_hook(name, bench, ex):
        """The intervention on the one sequence prefix + question + gold answer, position by
        position."""
        fn = fns[name]
        if name == "direction":
            return fn
        n_p, n_q, n_a = len(bench.prefix), len(ex.question), len(ex.answers[ex.gold])
        kinds = [("prefix", p) for p in range(n_p)] + [
            ("question", n_q - 2 - q) for q in range(n_q - 1)
        ]
        kinds += [("last_prompt", 0)] + [("answer", j) for j in range(n_a)]
        if name == "mean":
            target = torch.stack([refs.mean(bench.name, k)[feats] for k, _ in kinds])
            return lambda h: fn.splice(h, lambda f_sel: target[None].to(f_sel))
        ref = refs.of(bench.name)
        picks = ref.picks(ex.id, fn.seed)

        def resample(h):
            donor = h.clone()
            for p, (k, off) in enumerate(kinds):
                if k != "prefix":  # the few-shot block is every example's own: the clean value
                    slot = int(picks[k][min(off, len(picks[k]) - 1)])
                    if slot >= 0:
                        donor[0, p] = ref.resid[slot]
            f_donor = sae.encode(donor)[..., fn.features]
            return fn.splice(h, lambda f_sel: f_donor)

        return resample

    def but_first(fn):
        def apply(h):
            out = fn(h).clone()
            out[:, 0] = h[:, 0]
            return out

        return apply

    for name in fns:
        by_row = got[name].set_index("row")
        moved = 0.0
        for bench in encoded:
            for ex in bench.examples:
                fn = uncached_hook(name, bench, ex)
                ids = torch.tensor([bench.prefix + ex.question + ex.answers[ex.gold]])
                n = len(ex.answers[ex.gold])
                with torch.no_grad():
                    clean = torch.log_softmax(
                        lm.model(input_ids=ids).logits[0, -n - 1 :].float(), -1
                    )
                    with patch_residual(lm.model, LAYER, but_first(fn)):
                        ref = torch.log_softmax(
                            lm.model(input_ids=ids).logits[0, -n - 1 :].float(), -1
                        )
                    with patch_residual(lm.model, LAYER, fn):  # position 0 too: not what 'all' does
                        ref0 = torch.log_softmax(
                            lm.model(input_ids=ids).logits[0, -n - 1 :].float(), -1
                        )
                gold = ref[torch.arange(n), ex.answers[ex.gold]].sum().item()
                kl = (clean.exp() * (clean - ref)).sum(-1).mean().item()
                assert by_row.loc[ex.row, "gold_logprob"] == pytest.approx(gold, abs=2e-5)
                assert by_row.loc[ex.row, "kl"] == pytest.approx(kl, abs=2e-5)
                moved = max(
                    moved, abs(ref0[torch.arange(n), ex.answers[ex.gold]].sum().item() - gold)
                )
        assert moved > 1e-4  # the check would see position 0 ablated
        # Acting at every position is not acting at the answer positions only.
        assert (got[name].gold_logprob - answer[name].gold_logprob).abs().max() > 1e-3
    # The clean condition is the same whichever positions the others act at.
    assert got["clean"].gold_logprob.tolist() == pytest.approx(
        answer["clean"].gold_logprob.tolist(), abs=1e-6
    )


def test_all_positions_needs_the_layer(tiny_lms):
    lm = tiny_lms["gpt2"]
    encoded = encode_prompts(lm.tokenizer, tiny_prompts(n_open=2, n_choice=0))
    with pytest.raises(ValueError, match="needs start_layer"):
        score_conditions(lm, encoded, {}, progress=None, positions="all")
    with pytest.raises(ValueError, match="positions 'every'"):
        score_conditions(lm, encoded, {}, progress=None, start_layer=1, positions="every")


def test_logit_difference_of_choice_questions_is_gold_minus_best_other_choice(tiny_lms):
    """For each choice question: summed log-prob of the gold choice minus the best other one,
    checked against uncached full forwards of the same tokens; NaN for open answers."""
    lm = tiny_lms["llama"]
    encoded = encode_prompts(lm.tokenizer, tiny_prompts(n_open=2, n_choice=4))
    clean = score_conditions(lm, encoded, progress=None)["clean"].set_index("row")
    assert clean.loc[clean.benchmark == "arith", "logit_diff"].isna().all()
    logic = next(b for b in encoded if b.name == "logic")
    for ex in logic.examples:
        lp = []
        for answer in ex.answers:
            ids = torch.tensor([logic.prefix + ex.question + answer])
            with torch.no_grad():
                logp = torch.log_softmax(lm.model(ids).logits.float(), -1)[0]
            start = len(logic.prefix) + len(ex.question) - 1
            lp.append(sum(float(logp[start + j, a]) for j, a in enumerate(answer)))
        best_other = max(v for j, v in enumerate(lp) if j != ex.gold)
        r = clean.loc[ex.row]
        assert r["logit_diff"] == pytest.approx(lp[ex.gold] - best_other, abs=1e-3)
        assert (r["logit_diff"] > 0) == bool(r["correct"])


def test_stop_token_ids_are_computed_once_per_tokenizer(tiny_lms):
    from sae_reasoning.scoring import stop_token_ids
    from sae_reasoning.scoring.encoding import _stop_token_ids

    tok = tiny_lms["llama"].tokenizer
    first = stop_token_ids(tok)
    assert torch.equal(first, _stop_token_ids(tok))
    first[:] = -1  # callers get their own copy
    assert torch.equal(stop_token_ids(tok), _stop_token_ids(tok))


def _decode_alone(lm, ids: list[int], stop: set[int], steps: int) -> list[int]:
    """Reference greedy decoding: the whole sequence through the model at each step."""
    out = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(lm.model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt in stop:
                break
            out.append(nxt)
    return out


def _stop_token_ending_rows_apart(free: list[list[int]]) -> int:
    """A token that ends most rows' answers, at different steps, and leaves one unended."""

    def ends(c):
        return [toks.index(c) if c in toks else len(toks) for toks in free]

    def spread(c):
        e = ends(c)
        full = sum(x == len(t) for x, t in zip(e, free, strict=True))
        return (2 * (len(e) - full) >= len(e) and full > 0, len(set(e)))

    return max(sorted({t for toks in free for t in toks[1:]}), key=spread)


@pytest.mark.parametrize("family", ["llama", "phi"])
def test_greedy_rows_that_end_early_leave_the_others_unchanged(tiny_lms, family):
    """Decoding goes on with the unfinished rows only once most have ended their line: every
    row's answer is still what decoding that prompt alone writes."""
    from sae_reasoning.scoring.greedy import greedy_continuations
    from sae_reasoning.scoring.passes import iter_answer_batches

    lm = tiny_lms[family]
    prompts = tiny_prompts(n_open=12, n_choice=0)
    (bench,) = [b for b in encode_prompts(lm.tokenizer, prompts) if b.examples]
    (batch,) = iter_answer_batches(lm, [bench], batch_size=12)
    free = [_decode_alone(lm, bench.prefix + e.question, set(), 6) for e in batch.examples]
    stop = {_stop_token_ending_rows_apart(free)}
    want = [_decode_alone(lm, bench.prefix + e.question, stop, 6) for e in batch.examples]
    lengths = [len(w) for w in want]
    # most rows end early and one runs to the last step: decoding drops rows midway
    assert 2 * sum(n < 6 for n in lengths) >= len(lengths) and 6 in lengths, lengths
    got = greedy_continuations(lm, batch, torch.tensor(sorted(stop)), max_new_tokens=6)
    assert got == [lm.tokenizer.decode(w).split("\n")[0].strip() for w in want]


def _planted_gold(free: list[int], kind: int, vocab: int) -> list[int]:
    """A gold answer the greedy one agrees with fully (kind 0: its first 3 tokens), on one
    token (1), or not at all (2)."""
    if kind == 0:
        return free[:3]
    if kind == 1:
        return [free[0], (free[1] + 1) % vocab, free[2]]
    return [(free[0] + 1) % vocab]


@pytest.mark.parametrize("case", ["mixed", "open", "in_place"])
@pytest.mark.parametrize("family", ["llama", "phi"])
def test_greedy_goes_on_from_the_answer_pass(tiny_lms, family, case):
    """Decoding that starts from the clean answer pass (the gold answer's agreeing tokens and
    the next argmax taken from it) writes what decoding each prompt alone writes: for gold
    answers the greedy one agrees with fully, partly or not at all, with rows ending inside
    what the pass shows ("mixed", with choice questions: the rows are gathered) or none
    ("open": the pass's own buffers go on; "in_place": those of the questions' context,
    built with room for it, iter_answer_batches(spare=))."""
    from dataclasses import replace

    from sae_reasoning.scoring import EncodedBenchmark, iter_answer_batches
    from sae_reasoning.scoring.greedy import greedy_continuations

    lm, cap = tiny_lms[family], 6
    vocab = lm.model.config.vocab_size
    prompts = tiny_prompts(n_open=9, n_choice=3 if case == "mixed" else 0)
    benches = [b for b in encode_prompts(lm.tokenizer, prompts) if b.examples]
    examples, prefix = [], None
    for bench in benches:  # one benchmark: the open questions, then the choice ones
        prefix = prefix or bench.prefix
        for e in bench.examples:
            free = _decode_alone(lm, prefix + e.question, set(), cap)
            kind = e.row % 3
            answers = e.answers if e.is_choice else [_planted_gold(free, kind, vocab)]
            examples.append(
                replace(e, question=bench.prefix[len(prefix) :] + e.question, answers=answers)
            )
    bench = EncodedBenchmark("planted", prefix, examples)
    free = [_decode_alone(lm, prefix + e.question, set(), cap) for e in examples]
    # "mixed": a stop token among the first greedy tokens of a row answered right
    stop = {free[0][1]} if case == "mixed" else set()
    want = [_decode_alone(lm, prefix + e.question, stop, cap) for e in examples]
    spare = cap if case == "in_place" else None
    (batch,) = iter_answer_batches(lm, [bench], batch_size=len(examples), spare=spare)
    with torch.no_grad():
        logits = batch.run(lm.model, spare=cap)
    assert (batch.rows_context(cap) is batch.context) == (case == "in_place")
    got = greedy_continuations(
        lm, batch, torch.tensor(sorted(stop), dtype=torch.long), cap, answer_logits=logits
    )
    assert got == [lm.tokenizer.decode(w).split("\n")[0].strip() for w in want]
    if case == "mixed":
        assert any(len(w) < 2 for w in want), "a row ends inside the tokens the pass shows"


def test_greedy_runs_no_step_for_answers_the_pass_shows_whole(tiny_lms):
    """Gold answers that are the greedy answers up to the cap: decoding runs no model step,
    and writes them."""
    from dataclasses import replace

    from sae_reasoning.scoring.greedy import greedy_continuations
    from sae_reasoning.scoring.passes import iter_answer_batches

    lm, cap = tiny_lms["llama"], 4
    (bench,) = [b for b in encode_prompts(lm.tokenizer, tiny_prompts(6, 0)) if b.examples]
    free = [_decode_alone(lm, bench.prefix + e.question, set(), cap) for e in bench.examples]
    bench.examples = [replace(e, answers=[f]) for e, f in zip(bench.examples, free, strict=True)]
    (batch,) = iter_answer_batches(lm, [bench], batch_size=6)
    with torch.no_grad():
        logits = batch.run(lm.model, spare=cap)
    steps = []
    handle = lm.model.register_forward_hook(lambda *_: steps.append(1))
    try:
        got = greedy_continuations(lm, batch, torch.zeros(0, dtype=torch.long), cap, logits)
    finally:
        handle.remove()
    assert steps == []
    assert got == [lm.tokenizer.decode(f).split("\n")[0].strip() for f in free]


@pytest.mark.parametrize("family", ["llama", "phi"])
def test_answer_passes_in_the_questions_context_score_the_same(tiny_lms, family):
    """iter_answer_batches(spare=): answer passes write into the questions' own context (no
    copy) and score exactly as on a copy, pass after pass; with choice questions (several
    rows per example) they still run on a copy."""
    from sae_reasoning.scoring.passes import iter_answer_batches

    lm = tiny_lms[family]
    benches = [b for b in encode_prompts(lm.tokenizer, tiny_prompts(8, 4)) if b.examples]
    plain = list(iter_answer_batches(lm, benches, batch_size=4))
    roomy = list(iter_answer_batches(lm, benches, batch_size=4, spare=0))
    with torch.no_grad():
        for a, b in zip(plain, roomy, strict=True):
            want = a.run(lm.model)
            for _ in range(2):
                assert torch.equal(b.run(lm.model), want)
            open_rows = len(b.pair_example) == len(b.examples)
            assert (b.rows_context(0) is b.context) == open_rows
            assert b.context.length.tolist() == a.context.length.tolist()
    assert any(len(b.pair_example) > len(b.examples) for b in roomy)
