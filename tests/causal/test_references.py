"""Mean and resample ablation references: per benchmark, per position type, from `select` only."""

import re

import pandas as pd
import pytest
import torch

from sae_reasoning.causal.attribution import attribution_terms
from sae_reasoning.causal.config import CausalConfig
from sae_reasoning.causal.references import AblationReferences, ReferenceCollector
from sae_reasoning.causal.selection import select_pass, subset
from sae_reasoning.causal.splice import FeatureAblation, WithErrorAblated, condition
from sae_reasoning.models.hooks import capture_residuals, recording
from sae_reasoning.scoring import EncodedBenchmark, encode_prompts, iter_answer_batches
from tests.causal.test_splice import LAYER, random_sae
from tests.prompts_fixture import SHOTS, tiny_prompts

TYPES = ("prefix", "question", "last_prompt", "answer")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ask(prompt: str) -> str:
    """The prompt with its own question (not the few-shot block) changed."""
    return re.sub(r"\?\nAnswer:$", " please?\nAnswer:", prompt)


def prompts_table() -> pd.DataFrame:
    """arith (6: 3 select), logic (4 choice: 2 select), bare (no few-shot block: the question
    starts at position 0; 4: 2 select)."""
    bare = tiny_prompts(n_open=4, n_choice=0).assign(
        benchmark="bare",
        id=lambda d: d.id.str.replace("arith", "bare"),
        prompt=lambda d: d.prompt.str.replace(SHOTS, "", regex=False),
    )
    return pd.concat([tiny_prompts(n_open=6, n_choice=4), bare], ignore_index=True)


@pytest.fixture(scope="module")
def setup(tiny_model_dirs):
    from sae_reasoning.models import ModelHandle, ModelSpec

    lm = ModelHandle(ModelSpec("refs", str(tiny_model_dirs["llama"]), converted_cache=None)).load(
        "cpu"
    )
    sae = random_sae(seed=3)
    encoded = encode_prompts(lm.tokenizer, prompts_table())
    refs = AblationReferences.build(lm, sae, LAYER, encoded, batch_size=2, positions="all")
    return lm, sae, encoded, refs


def clean_features(lm, sae, bench, ex):
    """Brute force, one uncached forward of prefix + question + gold answer: the SAE features
    and errors of each position type (position 0 left out); question indexed from its end."""
    ids = torch.tensor([bench.prefix + ex.question + ex.answers[ex.gold]])
    with torch.no_grad():
        x = capture_residuals(lm.model, ids, None, [LAYER])[LAYER][0]
        f = sae.encode(x)
        err = x - sae.decode(f)
    n_p, n_q, n_a = len(bench.prefix), len(ex.question), len(ex.answers[ex.gold])
    last = n_p + n_q - 1
    pos = {
        "prefix": list(range(1, n_p)),
        "question": [p for p in range(n_p, last) if p != 0],
        "last_prompt": [last] if last != 0 else [],
        "answer": list(range(last + 1, last + 1 + n_a)),
    }
    from_end = {o: last - 1 - o for o in range(n_q - 1) if last - 1 - o != 0}
    return {"f": f, "err": err, "pos": pos, "from_end": from_end, "last": last}


def brute_force_means(lm, sae, encoded, split="select"):
    out = {}
    for bench in encoded:
        feats = {t: [] for t in TYPES}
        errs = {t: [] for t in TYPES}
        for ex in (e for e in bench.examples if e.split == split):
            c = clean_features(lm, sae, bench, ex)
            for t in TYPES:
                feats[t].append(c["f"][c["pos"][t]])
                errs[t].append(c["err"][c["pos"][t]])
        out[bench.name] = {
            t: (torch.cat(feats[t]).mean(0), torch.cat(errs[t]).mean(0))
            for t in TYPES
            if sum(len(v) for v in feats[t])
        }
    return out


def test_mean_references_are_the_select_means_of_each_benchmark_and_position_type(setup):
    lm, sae, encoded, refs = setup
    truth = brute_force_means(lm, sae, encoded)
    assert set(refs.benchmarks) == {"arith", "logic", "bare"}
    for b, by_type in truth.items():
        assert set(by_type) == (set(TYPES) - {"prefix"} if b == "bare" else set(TYPES))
        for t, (mean, err) in by_type.items():
            torch.testing.assert_close(refs.mean(b, t), mean, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(refs.mean(b, t, error=True), err, atol=1e-5, rtol=1e-5)
    # They differ between benchmarks and position types: one pooled mean is not the same thing.
    assert (refs.mean("arith", "answer") - refs.mean("logic", "answer")).abs().max() > 1e-2
    assert (refs.mean("arith", "answer") - refs.mean("arith", "question")).abs().max() > 1e-2
    # pooled_mean: every select example's whole sequence (few-shot block included), all benchmarks.
    rows = []
    for bench in encoded:
        for ex in (e for e in bench.examples if e.split == "select"):
            c = clean_features(lm, sae, bench, ex)
            rows.append(c["f"][[p for t in TYPES for p in c["pos"][t]]])
    torch.testing.assert_close(refs.pooled_mean(), torch.cat(rows).mean(0), atol=1e-5, rtol=1e-5)
    # positions='answer': only what the answer pass needs, the same values.
    answer_only = AblationReferences.build(
        lm, sae, LAYER, encoded, batch_size=3, positions="answer"
    )
    for t in ("last_prompt", "answer"):
        torch.testing.assert_close(
            answer_only.mean("logic", t), refs.mean("logic", t), atol=1e-6, rtol=1e-6
        )
    with pytest.raises(ValueError, match="positions='all'"):
        answer_only.mean("logic", "question")
    assert refs.summary()["benchmarks"]["arith"]["n_examples"] == 3


def test_references_never_read_the_heldout_split(setup):
    lm, sae, encoded, refs = setup
    prompts = prompts_table()
    held = prompts.split == "heldout"
    changed = prompts.assign(
        prompt=prompts.prompt.where(~held, prompts.prompt.map(ask)),
        target=prompts.target.where(~held | (prompts.answer_type == "choice"), " 99"),
        answer=prompts.answer.where(~held | (prompts.answer_type == "choice"), "99"),
    )
    enc = encode_prompts(lm.tokenizer, changed)
    assert [len(e.question) for b in enc for e in b.examples] != [
        len(e.question) for b in encoded for e in b.examples
    ]
    refs = AblationReferences.build(
        lm, sae, LAYER, encoded, batch_size=2, positions="all"
    )  # same threads as below
    same = AblationReferences.build(lm, sae, LAYER, enc, batch_size=2, positions="all")
    for b in refs.benchmarks:
        for t in refs.benchmarks[b].means:
            assert torch.equal(same.mean(b, t), refs.mean(b, t))
        assert torch.equal(same.of(b).resid, refs.of(b).resid)
    # A select example changed: its benchmark's references change.
    sel = prompts.index[(prompts.split == "select") & (prompts.benchmark == "arith")][0]
    moved = prompts.copy()
    moved.loc[sel, "prompt"] = ask(moved.loc[sel, "prompt"])
    other = AblationReferences.build(
        lm, sae, LAYER, encode_prompts(lm.tokenizer, moved), batch_size=2, positions="all"
    )
    assert (other.mean("arith", "question") - refs.mean("arith", "question")).abs().max() > 1e-4
    assert torch.equal(other.mean("logic", "question"), refs.mean("logic", "question"))


def _read_back(lm, sae, encoded, fn, feats, batch_size):
    """(example id, segment, column) -> the features `feats` after the hook, read back from the
    residual before and after it (recording hooks around the splice):
    f' = f + delta @ pinv(W_dec[S]).
    Answer pass: gold rows, columns 0..len(answer); question segment: its real tokens."""
    pinv = torch.linalg.pinv(sae.W_dec[feats].detach())
    out = {}

    def solve(x, y):
        return sae.encode(x)[..., feats] + (y - x) @ pinv

    for batch in iter_answer_batches(lm, encoded, batch_size, record_layer=LAYER):
        cond = condition(lm.model, LAYER, fn)
        with (
            torch.no_grad(),
            recording(lm.model, [LAYER], stop=False) as before,
            cond(batch, "answer"),
            recording(lm.model, [LAYER], stop=False) as after,
        ):
            batch.run(lm.model)
        with torch.no_grad():
            got = solve(before[LAYER], after[LAYER])
            for r in torch.nonzero(batch.gold_rows()).flatten().tolist():
                ex = batch.examples[int(batch.pair_example[r])]
                for c in range(int(batch.answer_len[r]) + 1):
                    out[ex.id, "answer", c] = got[r, c]
            q = batch.question
            if q is not None:
                x = q.resid
                got = solve(x, fn.at(batch, "question")(x))
                for i, ex in enumerate(batch.examples):
                    for c in range(int(q.mask[i].sum())):
                        out[ex.id, "question", c] = got[i, c]
    return out


def test_mean_ablation_sets_the_feature_to_its_benchmark_and_type_mean(setup):
    lm, sae, encoded, refs = setup
    spread = torch.stack([refs.mean(b, "answer") for b in refs.benchmarks]).std(0)
    feat = int(spread.argmax())  # a feature whose answer means differ between benchmarks
    got = _read_back(
        lm, sae, encoded, FeatureAblation(sae, [feat], "mean", references=refs), [feat], 3
    )
    by_id = {e.id: (b.name, e) for b in encoded for e in b.examples}
    checked = set()
    for (ex_id, segment, c), value in got.items():
        b, ex = by_id[ex_id]
        kind = segment if segment == "question" else ("last_prompt" if c == 0 else "answer")
        if kind == "question" and b == "bare" and c == 0:
            continue  # position 0: exempt in scoring (the hook's value there is never used)
        assert float(value) == pytest.approx(float(refs.mean(b, kind)[feat]), abs=1e-4)
        checked.add((b, kind))
    assert len(checked) == 3 * 3
    # Heldout and select examples alike: the value is their benchmark's, not a pooled one.
    assert len({round(float(refs.mean(b, "answer")[feat]), 5) for b in refs.benchmarks}) == 3


def _aligned(lm, sae, encoded, what="f"):
    """benchmark -> select id -> type -> {aligned offset: clean features (what="err": SAE error)}:
    last_prompt {0}, answer {answer offset}, question {offset from the question's end}."""
    out = {}
    for bench in encoded:
        out[bench.name] = {}
        for ex in (e for e in bench.examples if e.split == "select"):
            c = clean_features(lm, sae, bench, ex)
            v = c[what]
            out[bench.name][ex.id] = {
                "last_prompt": {0: v[c["last"]]} if c["last"] != 0 else {},
                "answer": {j: v[p] for j, p in enumerate(c["pos"]["answer"])},
                "question": {o: v[p] for o, p in c["from_end"].items()},
            }
    return out


def _donors(bank_b, kind, own, off, value, cols=slice(None)):
    """The select examples (not `own`) whose clean value at the aligned offset (or, where no other
    example has it, the nearest offset one has) is `value`."""
    others = {d: e[kind] for d, e in bank_b.items() if d != own}
    with_off = {d: v[off] for d, v in others.items() if off in v}
    if not with_off:
        near = min({o for v in others.values() for o in v}, key=lambda o: (abs(o - off), o))
        with_off = {d: v[near] for d, v in others.items() if near in v}
    return [d for d, v in with_off.items() if torch.allclose(v[cols], value, atol=1e-4)]


def test_resample_draws_another_select_example_of_the_benchmark_at_the_aligned_position(setup):
    lm, sae, encoded, refs = setup
    bank = _aligned(lm, sae, encoded)
    # Features that fire at most select positions: their values tell the donors apart.
    every = torch.stack(
        [v for b in bank.values() for e in b.values() for kind in e.values() for v in kind.values()]
    )
    feats = torch.argsort((every > 0).float().mean(0), descending=True)[:6].tolist()
    fn = FeatureAblation(sae, feats, "resample", references=refs, seed=11)
    got = _read_back(lm, sae, encoded, fn, feats, 2)
    by_id = {e.id: (b.name, e) for b in encoded for e in b.examples}
    donors = {}
    for (ex_id, segment, c), value in got.items():
        b, ex = by_id[ex_id]
        if segment == "answer":
            kind, off = ("last_prompt", 0) if c == 0 else ("answer", c - 1)
        else:
            h = len(ex.question) - 1
            kind, off = "question", h - 1 - c
            if b == "bare" and c == 0:
                continue  # position 0: exempt
        # Another select example of the benchmark, never the recipient itself. (Where the
        # prompts agree up to the position, e.g. the question's first tokens, so do the values:
        # several examples match and the donor is not identified.)
        match = _donors(bank[b], kind, ex_id, off, value, feats)
        assert match, (ex_id, segment, c)
        if len(match) == 1:
            donors[ex_id, kind, off] = match[0]
    # Heldout and select recipients, every benchmark and type, and more than one donor in use.
    assert {k for _, k, _ in donors} == {"last_prompt", "answer", "question"}
    assert {i.split("-")[0] for i, _, _ in donors} == {"arith", "logic", "bare"}
    assert any(by_id[i][1].split == "select" for i, _, _ in donors)
    assert len(set(donors.values())) > 3
    # One donor per example where it has the position: the last prompt token's and answer
    # offset 0's.
    pairs = [
        (d, donors[ex_id, "last_prompt", 0])
        for (ex_id, kind, off), d in donors.items()
        if kind == "answer" and off == 0 and (ex_id, "last_prompt", 0) in donors
    ]
    assert len(pairs) > 5 and all(a == b for a, b in pairs)
    # Deterministic and independent of the batch composition; the seed matters.
    again = _read_back(lm, sae, encoded, fn, feats, 3)
    assert again.keys() == got.keys()
    for k in got:
        torch.testing.assert_close(again[k], got[k], atol=1e-4, rtol=1e-4)
    other = _read_back(
        lm,
        sae,
        encoded,
        FeatureAblation(sae, feats, "resample", references=refs, seed=12),
        feats,
        2,
    )
    assert any(not torch.allclose(other[k], got[k], atol=1e-4) for k in got)


def test_the_error_term_is_ablated_with_the_same_references(setup):
    lm, sae, encoded, refs = setup
    truth = brute_force_means(lm, sae, encoded)
    batch = next(iter_answer_batches(lm, encoded[:1], 4, record_layer=LAYER))
    x = batch.question.resid
    with torch.no_grad():
        e = x - sae.decode(sae.encode(x))
        # Mean: the features spliced as FeatureAblation does, the error replaced by its mean.
        feats = [1, 2, 3]
        fa = FeatureAblation(sae, feats, "mean", references=refs)
        out = WithErrorAblated(fa, sae, "mean", refs).at(batch, "question")(x)
        torch.testing.assert_close(
            out,
            fa.at(batch, "question")(x) - e + truth["arith"]["question"][1],
            atol=1e-5,
            rtol=1e-5,
        )
        # Zero: every feature and the error gone, only the decoder bias is left.
        everything = FeatureAblation(sae, torch.arange(sae.cfg.d_sae), "zero")
        out = WithErrorAblated(everything, sae, "zero").at(batch, "question")(x)
        torch.testing.assert_close(out, sae.b_dec.expand_as(out), atol=1e-5, rtol=1e-5)
        # Resample, nothing else ablated: the reconstruction plus a donor's error, never its own.
        out = WithErrorAblated(FeatureAblation(sae, [], "zero", seed=5), sae, "resample", refs).at(
            batch, "question"
        )(x)
        donor_err = out - sae.decode(sae.encode(x))
    errs = _aligned(lm, sae, encoded[:1], "err")["arith"]
    assert {e.split for e in batch.examples} == {"select", "heldout"}
    for i, ex in enumerate(batch.examples):
        h = int(batch.question.mask[i].sum())
        for c in range(h):
            assert _donors(errs, "question", ex.id, h - 1 - c, donor_err[i, c]), (ex.id, c)


def test_references_fail_clearly(setup):
    lm, sae, encoded, refs = setup
    with pytest.raises(ValueError, match="resample ablation needs references"):
        FeatureAblation(sae, [1], "resample")
    with pytest.raises(RuntimeError, match="bound|at\\(batch, segment\\)"):
        FeatureAblation(sae, [1], "mean", references=refs)(torch.zeros(1, 2, sae.cfg.d_in))
    only = AblationReferences.build(lm, sae, LAYER, encoded[:1], batch_size=4, positions="answer")
    batch = next(iter_answer_batches(lm, encoded[1:2], 4))
    with pytest.raises(ValueError, match="no ablation references for benchmark 'logic'"):
        FeatureAblation(sae, [1], "mean", references=only).at(batch, "answer")
    batch = next(iter_answer_batches(lm, encoded[:1], 4, record_layer=LAYER))
    with pytest.raises(ValueError, match="positions='all'"):
        FeatureAblation(sae, [1], "resample", references=only).at(batch, "question")
    lone = AblationReferences.build(lm, sae, LAYER, encoded[:1], batch_size=4, max_examples=1)
    first = lone.of("arith").ids[0]
    batch = next(b for b in iter_answer_batches(lm, encoded[:1], 1) if b.examples[0].id == first)
    with pytest.raises(ValueError, match="no select example other than"):
        FeatureAblation(sae, [1], "resample", references=lone).at(batch, "answer")


@pytest.mark.parametrize("positions", ["answer", "all"])
def test_select_pass_gives_what_each_pass_gives_alone(setup, positions):
    """The attribution pass that also builds the references (selection.select_pass): its
    terms and references are exactly those of attribution and of the references' own pass."""
    lm, sae, encoded, _ = setup
    cfg = CausalConfig(batch_size=2, positions=positions)
    terms, refs = select_pass(lm, sae, LAYER, encoded, cfg)
    alone = AblationReferences.build(lm, sae, LAYER, encoded, batch_size=2, positions=positions)
    select = [
        EncodedBenchmark(b.name, b.prefix, sorted(b.examples, key=lambda e: e.row))
        for b in subset(encoded, "select", 99, seed=0)
    ]
    alone_terms = attribution_terms(lm, sae, LAYER, select, 2, positions=positions)
    assert terms[0].abs().sum() > 0 and terms[1].abs().sum() > 0  # gradients reached features
    for got, want in zip(terms, alone_terms):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert sorted(refs.benchmarks) == sorted(alone.benchmarks) == ["arith", "bare", "logic"]
    assert refs.summary() == alone.summary()
    for name, want in alone.benchmarks.items():
        got = refs.of(name)
        assert got.ids == want.ids and got.counts == want.counts
        for table in ("sums", "error_sums", "slots"):
            for kind, t in getattr(want, table).items():
                torch.testing.assert_close(getattr(got, table)[kind], t, rtol=0, atol=0)
        torch.testing.assert_close(got.resid, want.resid, rtol=0, atol=0)


def test_reference_collector_refuses_nothing_to_collect(setup):
    lm, sae, encoded, _ = setup
    with pytest.raises(ValueError, match="no 'select' examples"):
        ReferenceCollector(sae, LAYER, [subset(encoded, "heldout", 99, seed=0)[0]])
    with pytest.raises(ValueError, match="positions 'some'"):
        ReferenceCollector(sae, LAYER, encoded, positions="some")
