"""Stacked answer passes (scoring/stacked.py): several conditions in one pass score as each
in its own."""

import contextlib

import pytest
import torch

from sae_reasoning.causal.references import AblationReferences
from sae_reasoning.causal.splice import (
    DirectionControl,
    ErrorAblation,
    FeatureAblation,
    WithErrorAblated,
    condition,
)
from sae_reasoning.scoring import (
    Scorer,
    encode_prompts,
    iter_answer_batches,
    score_conditions,
    stacked,
)
from sae_reasoning.scoring.stacked import LOGITS_BYTES, stack_size
from tests.causal.test_splice import LAYER, random_sae
from tests.prompts_fixture import tiny_prompts
from tests.tiny import D_MODEL, FAMILIES

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BATCH = 3
CLOSE = ("gold_logprob", "logit_diff", "kl")
EQUAL = ("row", "id", "correct", "predicted_choice", "n_answer_tokens")


def encoded(lm):
    """arith (5 free answers) and logic (4 choice questions, two answers each)."""
    return encode_prompts(lm.tokenizer, tiny_prompts(n_open=5, n_choice=4))


def conditions(lm, enc, seed=0, positions="answer"):
    """Every kind of ablation splice.condition serves, the identity included."""
    sae = random_sae(seed=seed)
    refs = AblationReferences.build(lm, sae, LAYER, enc, batch_size=2, positions=positions)
    feats = list(range(0, 4 * D_MODEL, 5))
    ablations = {
        "zero": FeatureAblation(sae, feats, "zero"),
        "mean": FeatureAblation(sae, feats, "mean", references=refs),
        "resample": FeatureAblation(sae, feats, "resample", references=refs, seed=1),
        "error": ErrorAblation(sae),
        "control": DirectionControl(sae, feats, seed=2),
        "identity": FeatureAblation(sae, [], "zero"),
        "with_error": WithErrorAblated(FeatureAblation(sae, feats[:3], "zero"), sae, "zero"),
    }
    return {name: condition(lm.model, LAYER, a) for name, a in ablations.items()}


@contextlib.contextmanager
def counting(model):
    """The tokens (rows x sequence) of every forward pass of `model`: stacked copies run
    packed along the sequence."""
    sizes = []

    def count(_module, _args, kwargs):
        sizes.append(kwargs["input_ids"].numel())

    handle = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield sizes
    finally:
        handle.remove()


def sweep_batches(lm, enc, conds):
    """The batches score_conditions runs `conds` on (grouped for their answer passes)."""
    return iter_answer_batches(lm, enc, BATCH, answer_passes=len(conds) + 1)


def answer_tokens(lm, enc, conds):
    """R * S of each batch."""
    return [b.ids.numel() for b in sweep_batches(lm, enc, conds)]


def score(lm, enc, conds, **kw):
    with counting(lm.model) as sizes:
        out = score_conditions(
            lm, enc, conds, batch_size=BATCH, progress=None, start_layer=LAYER, **kw
        )
    return out, sizes


def assert_same(a, b):
    assert list(a) == list(b)
    for name in a:
        x, y = a[name], b[name]
        assert list(x.columns) == list(y.columns), name
        for col in EQUAL:
            assert x[col].tolist() == y[col].tolist(), (name, col)
        for col in CLOSE:
            torch.testing.assert_close(
                torch.tensor(x[col].to_numpy()),
                torch.tensor(y[col].to_numpy()),
                atol=1e-4,
                rtol=1e-4,
                equal_nan=True,
                msg=lambda m, name=name, col=col: f"{name}.{col}: {m}",
            )


@pytest.mark.parametrize("family", FAMILIES)
def test_stacked_conditions_score_as_alone(tiny_lms, family):
    lm = tiny_lms[family]
    enc = encoded(lm)
    conds = conditions(lm, enc)
    alone, alone_sizes = score(lm, enc, conds)
    # The conditions really differ from clean and from each other: a condition scored on
    # another's rows would show.
    kls = {name: float(df.kl.mean()) for name, df in alone.items()}
    assert kls["identity"] < 1e-6 and kls["clean"] == 0
    assert all(kls[n] > 1e-4 for n in ("zero", "mean", "resample", "error", "control"))
    assert len({round(kls[n], 6) for n in kls}) >= 6

    tokens = answer_tokens(lm, enc, conds)
    n = len(conds)
    # K = 2 or 3 on every batch: stacks of K and a partial last one (7 conditions).
    for stack_tokens in (2 * max(tokens), 3 * max(tokens), 100 * max(tokens)):
        ks = [
            stack_size(stack_tokens, b, len(lm.tokenizer), LAYER)
            for b in sweep_batches(lm, enc, conds)
        ]
        assert min(ks) >= 2
        stacked, sizes = score(lm, enc, conds, stack_tokens=stack_tokens)
        assert_same(alone, stacked)
        # Fewer passes: per batch, ceil(n / K) stacked answer passes instead of n.
        assert len(alone_sizes) - len(sizes) == sum(n - -(-n // k) for k in ks)
        assert sum(sizes) == sum(alone_sizes)  # the same tokens, in those fewer passes
        if stack_tokens == 2 * max(tokens):
            assert any(n % k for k in ks)  # a partial last stack was run


def test_one_condition_per_pass_is_todays_path(tiny_lms):
    lm = tiny_lms["llama"]
    enc = encoded(lm)
    conds = conditions(lm, enc)
    for stack_tokens in (0, 1):
        _, sizes = score(lm, enc, conds, stack_tokens=stack_tokens)
        _, plain = score(lm, enc, conds)
        assert sizes == plain
    # positions="all" rebuilds each condition's context: never stacked.
    conds = conditions(lm, enc, positions="all")
    with counting(lm.model) as stacked:
        a = score_conditions(
            lm,
            enc,
            conds,
            batch_size=BATCH,
            progress=None,
            start_layer=LAYER,
            positions="all",
            stack_tokens=10_000,
        )
    with counting(lm.model) as plain:
        b = score_conditions(
            lm, enc, conds, batch_size=BATCH, progress=None, start_layer=LAYER, positions="all"
        )
    assert stacked == plain
    assert_same(a, b)


def test_mixed_conditions(tiny_lms):
    """Conditions without a hook, or acting at another layer, run alone among stacked ones;
    the tables keep the order of the conditions."""
    lm = tiny_lms["gpt2"]
    enc = encoded(lm)
    conds = conditions(lm, enc)
    sae = random_sae(seed=0)
    mixed = {
        "zero": conds["zero"],
        "plain": lambda _b, _s: contextlib.nullcontext(),
        "mean": conds["mean"],
        "higher": condition(lm.model, LAYER + 1, ErrorAblation(sae)),
        "control": conds["control"],
        "resample": conds["resample"],
    }
    alone, _ = score(lm, enc, mixed)
    stacked, sizes = score(lm, enc, mixed, stack_tokens=10_000)
    assert_same(alone, stacked)
    # The hook-less condition is the clean model.
    torch.testing.assert_close(
        torch.tensor(stacked["plain"].gold_logprob.to_numpy()),
        torch.tensor(stacked["clean"].gold_logprob.to_numpy()),
        atol=1e-5,
        rtol=1e-5,
    )
    # Per batch: clean, plain and higher alone; the other four in one pass.
    _, alone_sizes = score(lm, enc, mixed)
    assert len(alone_sizes) - len(sizes) == 3 * len(answer_tokens(lm, enc, mixed))

    via_scorer = Scorer(lm, LAYER, batch_size=BATCH, stack_tokens=10_000).score(
        enc, mixed, progress=None
    )
    assert_same(alone, via_scorer)


def test_each_hook_sees_its_own_rows(tiny_lms):
    """A stacked hook is called on its condition's R rows [R, S, d_model], never K*R, and with
    the same tensors as alone."""
    lm = tiny_lms["llama"]
    enc = encoded(lm)

    def recorder(scale, seen):
        def hook(resid):
            seen.append(resid.clone())
            return resid * scale

        return hook

    def run(stack_tokens):
        seen = {s: [] for s in (0.5, 0.9, 1.1)}
        conds = {f"x{s}": condition(lm.model, LAYER, recorder(s, seen[s])) for s in seen}
        scores, _ = score(lm, enc, conds, stack_tokens=stack_tokens)
        return scores, seen

    alone, seen_alone = run(0)
    stacked, seen_stacked = run(10_000)
    assert_same(alone, stacked)
    conds = dict.fromkeys(seen_alone)
    rows = [(len(b.pair_example), b.ids.shape[1]) for b in sweep_batches(lm, enc, conds)]
    for s in seen_alone:
        assert [tuple(x.shape) for x in seen_stacked[s]] == [(r, t, D_MODEL) for r, t in rows]
        for a, b in zip(seen_alone[s], seen_stacked[s], strict=True):
            torch.testing.assert_close(a, b)
    # The scales differ, so a hook applied to another condition's rows would change scores.
    assert (alone["x0.5"].gold_logprob - alone["x1.1"].gold_logprob).abs().max() > 1e-3


def test_stack_size_caps_the_logits_and_the_copied_context(tiny_lms, monkeypatch):
    lm = tiny_lms["llama"]
    batch = next(iter(iter_answer_batches(lm, encoded(lm), BATCH)))
    tokens = batch.ids.numel()
    assert stack_size(0, batch, 400, LAYER) == 1
    assert stack_size(tokens - 1, batch, 400, LAYER) == 1
    assert stack_size(5 * tokens, batch, 400, LAYER) == 5
    vocab = 256_000
    k = stack_size(10**9, batch, vocab, LAYER)
    assert k * tokens * vocab * 4 <= LOGITS_BYTES < (k + 1) * tokens * vocab * 4
    assert stack_size(10**9, batch, 10**9, LAYER) == 1
    # One copy of the rows' context above the layer: what AnswerBatch.run copies per condition.
    per_copy = stacked.context_bytes(batch, LAYER + 1)
    above = batch.context.cache.layers[LAYER + 1 :]
    width = sum((lay.keys[0, :, 0].numel() + lay.values[0, :, 0].numel()) * 4 for lay in above)
    length = batch.context.cache.layers[0].keys.shape[2] + batch.ids.shape[1]
    assert per_copy == width * length * len(batch.pair_example) > 0
    monkeypatch.setattr(stacked, "CONTEXT_BYTES", 3 * per_copy + 1)
    assert stack_size(10**9, batch, 400, LAYER) == 3


def test_condition_exposes_its_hook(tiny_lms):
    lm = tiny_lms["llama"]
    enc = encoded(lm)
    sae = random_sae(seed=0)
    refs = AblationReferences.build(lm, sae, LAYER, enc, batch_size=2, positions="answer")
    batch = next(iter(iter_answer_batches(lm, enc, BATCH)))
    zero = FeatureAblation(sae, [1, 2], "zero")
    err = ErrorAblation(sae)
    assert condition(lm.model, LAYER, zero).hook(batch, "answer") is zero
    assert condition(lm.model, LAYER, err).hook(batch, "answer") is err
    cond = condition(lm.model, LAYER, FeatureAblation(sae, [1, 2], "mean", references=refs))
    assert cond.layer == LAYER
    x = torch.randn(len(batch.pair_example), batch.ids.shape[1], D_MODEL)
    # Bound to the batch's rows (the references are aligned with them).
    mean = cond.hook(batch, "answer")(x)
    assert mean.shape == x.shape and (mean - x).abs().max() > 0


def test_stacked_context_copies_only_the_layers_above_and_partial_stacks_view_it(tiny_lms):
    from sae_reasoning.models.cached_forward import head_rows, select

    lm = tiny_lms["llama"]
    batch = next(iter(iter_answer_batches(lm, encoded(lm), BATCH)))
    rows, room = batch.pair_example.repeat(3), batch.ids.shape[1]
    ctx = select(batch.context, rows, room, from_layer=LAYER + 1)
    for i, (lay, orig) in enumerate(zip(ctx.cache.layers, batch.context.cache.layers)):
        assert lay.keys.shape == (len(rows), *orig.keys.shape[1:])
        if i <= LAYER:  # a stand-in: its shape only, no memory
            assert lay._keys.stride() == (0, 0, 0, 0) and lay._values.stride() == (0, 0, 0, 0)
        else:
            assert torch.equal(lay.keys, orig.keys[rows]) and lay._keys.shape[2] == (
                orig.keys.shape[2] + room
            )
    two = head_rows(ctx, 2 * len(batch.pair_example))
    for lay, full in zip(two.cache.layers[LAYER + 1 :], ctx.cache.layers[LAYER + 1 :]):
        assert lay._keys.data_ptr() == full._keys.data_ptr()  # a view, not a copy
        assert lay.keys.shape[0] == 2 * len(batch.pair_example)
    assert torch.equal(two.length, ctx.length[: 2 * len(batch.pair_example)])


def test_a_hook_that_changes_its_input_in_place_is_refused(tiny_lms):
    """Stacked hooks share one input tensor (and its SAE encode): an in-place change would
    reach the conditions after it, so it is an error, not a silent mix-up."""
    lm = tiny_lms["llama"]
    enc = encoded(lm)

    def in_place(resid):
        resid.mul_(0.5)
        return resid

    conds = {
        "a": condition(lm.model, LAYER, in_place),
        "b": condition(lm.model, LAYER, lambda r: r * 2),
    }
    with pytest.raises(RuntimeError, match="changed its input in place"):
        score(lm, enc, conds, stack_tokens=10_000)
    score(lm, enc, conds, stack_tokens=0)  # one pass each: its own rows, allowed


@pytest.mark.parametrize("family", FAMILIES)
def test_a_packed_pass_is_each_copy_alone(tiny_lms, family):
    """K copies of the answer rows end to end on one copy of the context: each copy's logits
    are the plain pass's (up to rounding), and the context is left as it was."""
    from sae_reasoning.models.cached_forward import forward

    lm = tiny_lms[family]
    batch = next(iter(iter_answer_batches(lm, encoded(lm), BATCH)))
    with torch.no_grad():
        clean = batch.run(lm.model)
        packed = batch.run(lm.model, stack=3, packed=True)
        again = batch.run(lm.model)
    rows, width = batch.ids.shape
    assert packed.shape[:2] == (rows, 3 * width)
    valid = batch.mask.bool()
    for copy in packed.split(width, dim=1):
        torch.testing.assert_close(copy[valid], clean[valid], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again, clean, atol=0, rtol=0)
    with pytest.raises(ValueError, match="packed copies"):
        forward(lm.model, batch.ids, batch.mask, batch.context, keep=True, copies=2)
    with pytest.raises(ValueError, match="packed pass"):
        batch.run(lm.model, stack=2, packed=True, grad=True)
