import json
import threading

import torch

from sae_reasoning.activations.background import BackgroundWriter
from sae_reasoning.activations.store import ActivationStore, ShardWriter

HOOK = "blocks.0.hook_resid_post"


def rows(n, start=0):
    return dict(
        activations=torch.arange(start, start + n, dtype=torch.float32)[:, None]
        .expand(n, 4)
        .clone(),
        example_index=torch.zeros(n),
        position=torch.arange(n),
        token_id=torch.zeros(n),
    )


def test_an_interrupt_still_writes_every_batch_already_handed_to_the_writer(tmp_path):
    """Ctrl-C while the writer is behind: the queued batches are written, not dropped.

    The writer thread is held inside its first batch until abort() is waiting for it, so
    the queue is full when the interrupt comes, whatever the machine's load."""
    writer = ShardWriter(tmp_path / "acts", header={"hook_point": HOOK}, d_model=4, shard_tokens=8)
    gate, add = threading.Event(), writer.add
    writer.add = lambda **kw: (gate.wait(), add(**kw))
    sink = BackgroundWriter({0: writer}, max_pending=3)
    join = sink._thread.join
    sink._thread.join = lambda *a: (gate.set(), join(*a))  # abort() has begun: let the writer go
    for k in range(3):  # 3 x 12 rows: shards 0..3 complete (32 rows), 4 rows left unfinished
        sink.put({0: rows(12, 12 * k)})
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        sink.abort()
    m = json.loads((tmp_path / "acts" / "manifest.json").read_text())
    assert not m["complete"]
    assert [e["n_tokens"] for e in m["shards"]] == [8, 8, 8, 8] and m["n_tokens"] == 32
    assert sorted(p.name for p in (tmp_path / "acts").glob("*.safetensors")) == [
        f"shard_{i:05d}.safetensors" for i in range(4)
    ]
    store = ActivationStore(tmp_path / "acts", require_complete=False)
    store.verify()
    got = torch.cat([store.shard(i)["activations"][:, 0] for i in range(4)])
    assert torch.equal(got, torch.arange(32, dtype=torch.float32))
