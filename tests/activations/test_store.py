import json
import re

import pytest
import torch

from sae_reasoning.activations import (
    ActivationSet,
    ActivationStore,
    MassiveActivationFilter,
    ShardWriter,
)
from sae_reasoning.activations import digests as store_mod
from sae_reasoning.activations.store import storage_rows

HOOK = "blocks.1.hook_resid_post"


def write_store(
    root, bench="b", n_examples=10, seq=20, d=8, dtype="float32", shard_tokens=50, seed=0
):
    g = torch.Generator().manual_seed(seed)
    w = ShardWriter(
        root / bench / HOOK,
        header={"model": "m", "benchmark": bench, "hook_point": HOOK},
        d_model=d,
        dtype=dtype,
        shard_tokens=shard_tokens,
    )
    rows = []
    for i in range(n_examples):
        a = torch.randn(seq, d, generator=g)
        a[0] *= 200  # a massive activation at the first position
        w.add(
            a,
            example_index=torch.full((seq,), i),
            position=torch.arange(seq),
            token_id=torch.arange(seq),
        )
        rows.append(a)
    w.close()
    return torch.cat(rows)


def test_round_trip_shards_manifest_and_checksums(tmp_path):
    rows = write_store(tmp_path)
    store = ActivationStore(tmp_path / "b" / HOOK)
    m = store.manifest
    assert m["complete"] and m["n_tokens"] == 200 and m["d_model"] == 8
    assert [s["n_tokens"] for s in m["shards"]] == [50, 50, 50, 50]
    assert all(len(s["sha256"]) == 64 for s in m["shards"])
    store.verify()
    got = torch.cat([store.shard(i)["activations"] for i in range(4)])
    torch.testing.assert_close(got, rows)
    meta = store.metadata()
    assert list(meta.columns) == ["example_index", "position", "token_id", "norm"]
    assert m["norm_stats"]["first_position_ratio_to_median"] > 50


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_storage_dtype_reads_back_as_float32(tmp_path, dtype):
    rows = write_store(tmp_path, dtype=dtype)
    store = ActivationStore(tmp_path / "b" / HOOK)
    a = store.shard(0)["activations"]
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, rows[:50], rtol=1e-2, atol=1e-2 * 200)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rows_prepared_by_the_caller_are_stored_bit_for_bit(tmp_path, dtype):
    # Capture converts rows and takes their norms on its own thread (storage_rows); the
    # writer copies the bits, across a shard boundary, and keeps the float32 norms.
    x = torch.randn(70, 8, generator=torch.Generator().manual_seed(3)) * 50
    rows, norm = storage_rows(x, dtype)
    assert rows.dtype == getattr(torch, dtype)
    torch.testing.assert_close(norm, x.norm(dim=-1), rtol=0, atol=0)
    w = ShardWriter(tmp_path / HOOK, header={}, d_model=8, dtype=dtype, shard_tokens=50)
    meta = dict(
        example_index=torch.arange(70), position=torch.arange(70), token_id=torch.arange(70)
    )
    w.add(rows[:30], norm=norm[:30], **{k: v[:30] for k, v in meta.items()})
    w.add(rows[30:], norm=norm[30:], **{k: v[30:] for k, v in meta.items()})
    w.close()
    store = ActivationStore(tmp_path / HOOK)
    shards = [store.shard(i) for i in range(2)]
    got = torch.cat([s["activations"] for s in shards])
    assert torch.equal(got, rows.float())
    assert torch.equal(torch.cat([s["norm"] for s in shards]), norm)
    assert torch.equal(torch.cat([s["position"] for s in shards]).long(), torch.arange(70))


def test_corrupted_shard_fails_checksum(tmp_path):
    write_store(tmp_path)
    path = tmp_path / "b" / HOOK / "shard_00001.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"activation shard {re.escape(str(path))} is corrupted"):
        ActivationStore(tmp_path / "b" / HOOK, verify=False).verify()


def _flip_data_area(path, n=400):
    """Flip n bytes in the tensor data (after the 8-byte length and the JSON header)."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    assert len(data) - start > n + 100
    for i in range(start + 100, start + 100 + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_a_shards_data_area_stop_training_reads_naming_shard_and_digests(tmp_path):
    write_store(tmp_path)
    folder = tmp_path / "b" / HOOK
    path = folder / "shard_00002.safetensors"
    entry = json.loads((folder / "manifest.json").read_text())["shards"][2]
    _flip_data_area(path)
    algo = "xxh3_128" if store_mod.xxhash is not None else "sha256"
    found = store_mod.digest_file(path, algo)
    assert found != entry[algo]
    with pytest.raises(store_mod.CorruptShardError) as err:
        list(ActivationSet.open(tmp_path).iter_batches(HOOK, 32, shuffle=False))
    msg = str(err.value)
    assert f"activation shard {path} is corrupted" in msg
    assert f"manifest.json records {algo} {entry[algo]}, the file has {found}" in msg
    assert f"delete {tmp_path / 'b'} and run `kedro run --pipeline=capture` again" in msg
    # The metadata paths check too.
    with pytest.raises(store_mod.CorruptShardError, match="shard_00002.safetensors is corrupted"):
        ActivationStore(folder).metadata()


def test_an_old_manifest_with_only_sha256_is_still_checked(tmp_path):
    rows = write_store(tmp_path)
    folder = tmp_path / "b" / HOOK
    m = json.loads((folder / "manifest.json").read_text())
    for e in m["shards"]:
        e.pop("xxh3_128", None)
    (folder / "manifest.json").write_text(json.dumps(m))
    got = torch.cat(
        list(ActivationSet.open(tmp_path).iter_batches(HOOK, 50, shuffle=False, exclude=None))
    )
    torch.testing.assert_close(got, rows)
    _flip_data_area(folder / "shard_00000.safetensors")
    store_mod.forget_verified()
    with pytest.raises(
        store_mod.CorruptShardError,
        match=(
            rf"manifest.json records sha256 {m['shards'][0]['sha256']}, "
            r"the file has [0-9a-f]{64}"
        ),
    ):
        ActivationStore(folder).shard(0)


def test_a_corrupted_header_is_an_error_naming_its_file(tmp_path):
    write_store(tmp_path)
    folder = tmp_path / "b" / HOOK
    path = folder / "shard_00001.safetensors"
    data = bytearray(path.read_bytes())
    data[12] = 0xFF  # inside the JSON header: invalid UTF-8
    path.write_bytes(bytes(data))
    with pytest.raises(
        store_mod.CorruptShardError, match=rf"activation shard {re.escape(str(path))} is corrupted"
    ):
        ActivationStore(folder).shard(1)
    # Unverified reads still name the file when the header cannot be parsed.
    with pytest.raises(
        store_mod.CorruptShardError,
        match=rf"activation shard {re.escape(str(path))}: cannot read its safetensors header "
        r"\(.*invalid UTF-8.*\); delete ",
    ):
        ActivationStore(folder, verify=False).shard(1)


def test_an_intact_store_reads_as_before_and_each_shard_is_hashed_once_per_process(
    tmp_path, monkeypatch
):
    rows = write_store(tmp_path)
    store_mod.forget_verified()
    hashed = []
    real = store_mod.digest_file
    monkeypatch.setattr(
        store_mod, "digest_file", lambda path, algo: hashed.append(path.name) or real(path, algo)
    )
    acts = ActivationSet.open(tmp_path)
    for _ in range(3):  # epochs
        got = torch.cat(list(acts.iter_batches(HOOK, 50, shuffle=False, exclude=None)))
        torch.testing.assert_close(got, rows)
    ActivationSet.open(tmp_path).stores["b"][HOOK].metadata()  # a second open in the same process
    assert sorted(hashed) == [f"shard_{i:05d}.safetensors" for i in range(4)]
    m = acts.stores["b"][HOOK].manifest
    assert all(len(e["sha256"]) == 64 for e in m["shards"])
    if store_mod.xxhash is not None:
        assert all(len(e["xxh3_128"]) == 32 for e in m["shards"])


def test_incomplete_folder_is_refused(tmp_path):
    w = ShardWriter(tmp_path / "b" / HOOK, header={"hook_point": HOOK}, d_model=4, shard_tokens=2)
    w.add(torch.randn(5, 4), example_index=[0] * 5, position=range(5), token_id=range(5))
    with pytest.raises(ValueError, match="incomplete"):
        ActivationStore(tmp_path / "b" / HOOK)
    assert json.loads((tmp_path / "b" / HOOK / "manifest.json").read_text())["n_tokens"] == 4


def test_batches_exclude_massive_rows_shuffle_and_cover_everything(tmp_path):
    write_store(tmp_path, "b1")
    write_store(tmp_path, "b2", seed=1)
    s = ActivationSet.open(tmp_path)
    assert s.benchmarks == ["b1", "b2"] and s.hook_points == [HOOK]
    rule = MassiveActivationFilter()
    assert s.n_tokens(HOOK) == 400 and s.n_tokens(HOOK, rule) == 380
    batches = list(s.iter_batches(HOOK, 32, buffer_tokens=64, seed=3))
    allrows = torch.cat(batches)
    assert len(allrows) == 380 and allrows.norm(dim=-1).max() < 50
    ordered = torch.cat(list(s.iter_batches(HOOK, 32, shuffle=False)))
    assert not torch.equal(allrows, ordered)
    assert torch.allclose(allrows.sum(0), ordered.sum(0), atol=1e-3)
    again = torch.cat(list(s.iter_batches(HOOK, 32, buffer_tokens=64, seed=3)))
    assert torch.equal(allrows, again)
    held = torch.cat(list(s.iter_batches(HOOK, 32, select_examples=lambda ex: ex % 5 == 0)))
    assert len(held) == 2 * 2 * 19


def test_bad_d_model_and_dtype(tmp_path):
    with pytest.raises(ValueError, match="dtype 'int8'"):
        ShardWriter(tmp_path / "x", header={}, d_model=4, dtype="int8")
    w = ShardWriter(tmp_path / "x", header={}, d_model=4)
    with pytest.raises(ValueError, match="d_model=4"):
        w.add(torch.randn(3, 5), example_index=[0] * 3, position=range(3), token_id=range(3))


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 4097])
def test_exact_median_in_chunks_equals_torch_median(n):
    from sae_reasoning.activations.norms import exact_median

    g = torch.Generator().manual_seed(n)
    values = torch.randn(n, generator=g).exp() * 100
    values[::5] = values[0]  # ties
    chunks = list(values.split(333))
    assert exact_median(lambda: iter(chunks)) == float(values.median())
    assert exact_median(lambda: iter([])) is None
