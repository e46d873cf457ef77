"""The SAE training corpus: evaluation questions left out, rows cut at context_tokens under the
token budget, captured through the activation store (reuse, resume), on a tiny real model."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from sae_reasoning.activations import ActivationSet
from sae_reasoning.activations.corpus import (
    CORPUS,
    CorpusCaptureJob,
    CorpusSource,
    EvaluationFilter,
    pack_corpus,
)
from sae_reasoning.activations.store import ShardWriter
from sae_reasoning.datasets.hf_datasets import HFDatasetsDataset
from sae_reasoning.models import ModelHandle, ModelSpec, capture_residuals
from sae_reasoning.models.hooks import transformer_blocks
from sae_reasoning.scoring import prefix_ids

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture
def handle(tiny_model_dirs):
    return ModelHandle(ModelSpec("tiny_llama", str(tiny_model_dirs["llama"]), converted_cache=None))


def corpus_frame(n=60):
    return pd.DataFrame(
        {
            "question": [f"What is {i} plus {i + 1} and then some more words?" for i in range(n)],
            "answer": [f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}" for i in range(n)],
        }
    )


def test_evaluation_questions_are_dropped_from_question_rows_and_free_text():
    f = EvaluationFilter(["What is 3 plus 4 and then some more words?", "Is it  raining?"])
    src = CorpusSource(corpus_frame(6), exclude=f)
    texts = list(src.texts())
    assert len(texts) == 5 and f.n_dropped == 1
    assert (
        texts[0]
        == "Question: What is 0 plus 1 and then some more words?\nAnswer: 0 + 1 = 1\n#### 1"
    )
    free = CorpusSource(
        [
            {"text": "Intro. Question: what is 3 plus 4 AND then some more words? 7"},
            {"text": "is it raining? yes"},
            {"text": "What is 3 plus 5 and then some more words?"},
        ],
        exclude=f,
    )
    assert list(free.texts()) == ["What is 3 plus 5 and then some more words?"] and f.n_dropped == 2
    with pytest.raises(ValueError, match="sae_corpus row 0: no 'text' column"):
        list(CorpusSource([{"body": "x"}]).texts())


def test_pack_cuts_rows_at_context_tokens_and_stops_at_the_budget(tiny_model_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dirs["llama"])
    texts = [f"text number {i} " * 5 for i in range(300)]
    full = pack_corpus(tok, texts, 16, None, [1], separator=2)
    ids = [t for x in tok(texts, add_special_tokens=False)["input_ids"] for t in (*x, 2)]
    assert full.ids.tolist() == ids
    assert set(full.lengths[:-1]) == {15} and 1 <= full.lengths[-1] <= 15  # 16 with the start token
    cut = pack_corpus(tok, iter(texts), 16, 1000, [1], separator=2)
    assert len(cut.ids) == 1000 and cut.ids.tolist() == ids[:1000]
    assert cut.rows.tolist() == list(range(len(cut))) and cut.prefix == [1]


def test_capture_writes_rows_of_context_tokens_equal_to_a_plain_forward(tmp_path, handle):
    job = CorpusCaptureJob(
        handle,
        None,
        layers=[1],
        batch_tokens=128,
        shard_tokens=100,
        corpus=CorpusSource(corpus_frame()),
        context_tokens=24,
        max_tokens=500,
    )
    summary = job.run(tmp_path)
    assert summary["captured"] == {CORPUS: 500}
    store = ActivationSet.open(tmp_path).stores[CORPUS][HOOK]
    assert (
        store.n_tokens == 500
        and store.manifest["context_tokens"] == 24
        and store.manifest["complete"]
    )
    meta = store.metadata()
    lm = handle.load()
    start = prefix_ids(lm.tokenizer, "")
    width = 24 - len(start)
    assert meta.groupby("example_index").size().max() == width
    assert meta.position.min() == len(start) and meta.position.max() == 23
    # Row 3 equals a plain forward of the start token(s) + its tokens.
    row = meta.example_index == 3
    ids = torch.tensor([start + meta.token_id[row].tolist()])
    ref = capture_residuals(lm.model, ids, None, [1])[1][0][len(start) :]
    got = torch.cat([store.shard(i)["activations"] for i in range(len(store.manifest["shards"]))])
    torch.testing.assert_close(
        got[torch.from_numpy(row.to_numpy().copy())], ref, atol=1e-4, rtol=1e-4
    )


def test_reuse_and_a_changed_corpus_or_budget_recaptures(tmp_path, handle):
    def job(frame, budget):
        return CorpusCaptureJob(
            handle,
            None,
            layers=[1],
            corpus=CorpusSource(frame),
            context_tokens=32,
            max_tokens=budget,
        )

    assert job(corpus_frame(), 300).run(tmp_path)["captured"]
    again = job(corpus_frame(), 300).run(tmp_path)
    assert again["reused"] == [CORPUS] and not again["captured"]
    # An evaluation question now in the examples: the corpus row goes, the capture is redone.
    excluded = CorpusSource(
        corpus_frame(), exclude=EvaluationFilter([corpus_frame()["question"][0]])
    )
    redo = CorpusCaptureJob(
        handle, None, layers=[1], corpus=excluded, context_tokens=32, max_tokens=300
    )
    assert redo.run(tmp_path)["captured"] == {CORPUS: 300}
    assert job(corpus_frame(), 200).run(tmp_path)["captured"] == {CORPUS: 200}


def test_interrupted_corpus_capture_resumes_to_the_same_files(tmp_path, handle):
    kw = {
        "layers": [1],
        "batch_tokens": 64,
        "shard_tokens": 40,
        "context_tokens": 16,
        "max_tokens": 400,
    }
    CorpusCaptureJob(handle, None, corpus=CorpusSource(corpus_frame()), **kw).run(tmp_path / "ref")
    lm = handle.load()
    calls = {"n": 0}

    def interrupt(*_):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt

    hook = transformer_blocks(lm.model)[0].register_forward_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            CorpusCaptureJob(handle, None, corpus=CorpusSource(corpus_frame()), **kw).run(
                tmp_path / "out"
            )
    finally:
        hook.remove()
    partial = json.loads((tmp_path / "out" / f".{CORPUS}.tmp" / HOOK / "manifest.json").read_text())
    assert not partial["complete"] and partial["n_tokens"] > 0
    CorpusCaptureJob(handle, None, corpus=CorpusSource(corpus_frame()), **kw).run(tmp_path / "out")
    files = lambda root: {p.name: p.read_bytes() for p in (root / CORPUS / HOOK).iterdir()}
    assert files(tmp_path / "out") == files(tmp_path / "ref")


def test_streamed_local_json_is_read_only_up_to_the_budget(tmp_path, handle):
    path = tmp_path / "corpus.jsonl"
    rows = [{"text": f"Document {i}: " + "words and more words " * 8} for i in range(400)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = HFDatasetsDataset(
        path="json",
        data_files=str(path),
        split="train",
        streaming=True,
        columns=["text"],
        load_args={"cache_dir": str(tmp_path / "hf")},
    )
    streamed = ds.load()
    assert not isinstance(streamed, pd.DataFrame)
    assert [r["text"] for r in streamed] == [r["text"] for r in rows]
    seen = []

    class Counted:  # the streamed rows, counting what the capture reads
        identity = streamed.identity

        def __iter__(self):
            for r in streamed:
                seen.append(r)
                yield r

    job = CorpusCaptureJob(
        handle, None, layers=[1], corpus=CorpusSource(Counted()), context_tokens=32, max_tokens=600
    )
    assert job.run(tmp_path / "acts")["captured"] == {CORPUS: 600}
    assert 0 < len(seen) < len(rows)  # the reader stopped at the budget (in tokenizer chunks)


def test_streaming_identity_changes_with_the_file_and_needs_a_split(tmp_path):
    from kedro.io.core import DatasetError

    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a"}\n')
    ds = HFDatasetsDataset(path="json", data_files=str(path), split="train", streaming=True)
    first = CorpusSource(ds.load()).identity()
    path.write_text('{"text": "a b"}\n')
    assert CorpusSource(ds.load()).identity() != first
    with pytest.raises(DatasetError, match="streaming needs a `split`"):
        HFDatasetsDataset(path="json", data_files=str(path), streaming=True)


def test_context_over_the_model_window_is_named(tmp_path, handle):
    lm = handle.load()
    too_long = lm.model.config.max_position_embeddings + 1
    job = CorpusCaptureJob(
        handle,
        None,
        layers=[1],
        corpus=CorpusSource(corpus_frame()),
        context_tokens=too_long,
        max_tokens=100,
    )
    with pytest.raises(ValueError, match="context_tokens=.*over the model's context"):
        job.run(tmp_path)


def test_corpus_folder_sits_beside_benchmarks_in_an_activation_set(tmp_path):
    w = ShardWriter(tmp_path / CORPUS / HOOK, header={"model": "m", "hook_point": HOOK}, d_model=4)
    w.add(torch.ones(3, 4), example_index=np.zeros(3), position=np.arange(3), token_id=np.zeros(3))
    w.close()
    assert ActivationSet.open(tmp_path).benchmarks == [CORPUS]
