"""ResidStore and StoreWriter on their own: layout on disk, partial stores, and bad directories."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from lens_pivotal.resid.store import MANIFEST, ResidStore, StoreMismatchError, StoreWriter

KEY = {"weights_fingerprint": "a" * 64, "tokens_and_positions": "b" * 64, "versions": {"torch": "2.0", "transformers": "5.0"}}
HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]
MANIFEST_FIELDS = {"key": KEY, "n_texts": 3, "n_rows": 4, "d_model": 2, "n_model_layers": 2, "hook_names": HOOKS}


def write_two_shards(directory):
    writer = StoreWriter.open_or_create(directory, manifest=dict(MANIFEST_FIELDS), n_texts=3, shard_texts=2)
    assert writer.ranges() == [range(0, 2), range(2, 3)] and not writer.is_written(0)
    first = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    writer.write_shard(0, first, torch.tensor([0, 0, 1]), torch.tensor([0, 4, 1]))
    return writer, first


def test_shards_concatenate_in_text_order(tmp_path):
    writer, first = write_two_shards(tmp_path / "s")
    second = -torch.ones(2, 1, 2)
    writer.write_shard(1, second, torch.tensor([2]), torch.tensor([7]))
    store = writer.finish()
    torch.testing.assert_close(store.load(), torch.cat([first, second], dim=1))
    torch.testing.assert_close(store.load([1]), torch.cat([first, second], dim=1)[[1]])
    assert store.text_index.tolist() == [0, 0, 1, 2] and store.positions.tolist() == [0, 4, 1, 7]
    assert [sorted(shard) for shard in store.iter_shards()] == [["position", "resid", "text_index"]] * 2


def test_a_partial_store_reopens_as_incomplete_and_resumes(tmp_path):
    write_two_shards(tmp_path / "s")
    partial = ResidStore.open(tmp_path / "s")
    assert not partial.complete and len(partial) == 3
    resumed = StoreWriter.open_or_create(tmp_path / "s", manifest=dict(MANIFEST_FIELDS), n_texts=3, shard_texts=2)
    assert resumed.is_written(0) and not resumed.is_written(1)


def test_shards_written_by_separate_writers_are_listed_in_order_once_finished(tmp_path):
    first_writer = StoreWriter.open_or_create(tmp_path / "s", manifest=dict(MANIFEST_FIELDS), n_texts=3, shard_texts=2)
    second_writer = StoreWriter.open_or_create(tmp_path / "s", manifest=dict(MANIFEST_FIELDS), n_texts=3, shard_texts=2)
    second_writer.write_shard(1, -torch.ones(2, 1, 2), torch.tensor([2]), torch.tensor([7]), record=False)
    assert not ResidStore.open(tmp_path / "s").complete and len(ResidStore.open(tmp_path / "s")) == 0
    with pytest.raises(FileNotFoundError, match="shard 0 .texts 0-1. was never written"):
        first_writer.finish()
    first_writer.write_shard(0, torch.zeros(2, 3, 2), torch.tensor([0, 0, 1]), torch.tensor([0, 4, 1]), record=False)
    store = first_writer.finish()
    assert store.complete and store.text_index.tolist() == [0, 0, 1, 2] and store.positions.tolist() == [0, 4, 1, 7]


def test_layer_is_looked_up_by_block_number_or_hook_name_not_by_slot(tmp_path):
    hooks = ["blocks.0.hook_resid_pre", "blocks.2.hook_resid_post", "blocks.0.hook_resid_post"]
    writer = StoreWriter.open_or_create(
        tmp_path / "s", manifest={**MANIFEST_FIELDS, "hook_names": hooks, "n_model_layers": 3, "n_texts": 1}, n_texts=1, shard_texts=1
    )
    resid = torch.arange(3 * 2 * 2, dtype=torch.float32).reshape(3, 2, 2)  # slot k holds 4k..4k+3
    writer.write_shard(0, resid, torch.tensor([0, 0]), torch.tensor([0, 1]))
    store = writer.finish()
    torch.testing.assert_close(store.layer(2), resid[1], atol=0, rtol=0)
    torch.testing.assert_close(store.layer(-1), resid[1], atol=0, rtol=0)  # the model's last block
    torch.testing.assert_close(store.layer(0), resid[2], atol=0, rtol=0)
    torch.testing.assert_close(store.layer("blocks.0.hook_resid_pre"), resid[0], atol=0, rtol=0)
    assert store.slot_of("blocks.0.hook_resid_post") == 2
    with pytest.raises(KeyError, match=r"holds no blocks.1.hook_resid_post: it holds blocks \[2, 0\] and blocks.0.hook_resid_pre"):
        store.layer(1)
    with pytest.raises(KeyError, match="holds no blocks.5.hook_resid_pre"):
        store.layer("blocks.5.hook_resid_pre")
    with pytest.raises(TypeError, match="layer must be a block number or a hook name, got float"):
        store.layer(1.0)


def test_a_store_of_another_key_names_what_differs(tmp_path):
    write_two_shards(tmp_path / "s")
    other = {**KEY, "weights_fingerprint": "c" * 64, "versions": {**KEY["versions"], "torch": "2.1"}}
    with pytest.raises(StoreMismatchError) as refused:
        StoreWriter.open_or_create(tmp_path / "s", manifest={**MANIFEST_FIELDS, "key": other}, n_texts=3, shard_texts=2)
    message = str(refused.value)
    assert "weights fingerprint: stored aaaaaaaaaaaa…, now cccccccccccc…" in message
    assert "versions torch: stored 2.0, now 2.1" in message and "overwrite=True" in message
    assert "tokens and positions" not in message and "transformers" not in message


def test_a_version_only_difference_is_refused(tmp_path):
    write_two_shards(tmp_path / "s")
    newer = {**KEY, "versions": {**KEY["versions"], "transformers": "5.1"}}
    with pytest.raises(StoreMismatchError, match=r"\(versions transformers: stored 5.0, now 5.1\)"):
        StoreWriter.open_or_create(tmp_path / "s", manifest={**MANIFEST_FIELDS, "key": newer}, n_texts=3, shard_texts=2)


def test_a_store_from_before_the_key_is_refused(tmp_path):
    write_two_shards(tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / MANIFEST).read_text())
    del manifest["key"]  # what earlier versions wrote: an input_hash over model name, hooks, dtype and tokens only
    (tmp_path / "s" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StoreMismatchError, match="written before stores recorded the model's weights"):
        StoreWriter.open_or_create(tmp_path / "s", manifest=dict(MANIFEST_FIELDS), n_texts=3, shard_texts=2)


def test_overwrite_discards_only_the_store_and_starts_afresh(tmp_path):
    write_two_shards(tmp_path / "s")
    (tmp_path / "s" / ".shard-00001.safetensors.x1y2.safetensors").write_bytes(b"scratch of an interrupted write")
    (tmp_path / "s" / "notes.txt").write_text("mine")
    other = {**KEY, "weights_fingerprint": "c" * 64}
    writer = StoreWriter.open_or_create(
        tmp_path / "s", manifest={**MANIFEST_FIELDS, "key": other}, n_texts=3, shard_texts=2, overwrite=True
    )
    assert sorted(path.name for path in (tmp_path / "s").iterdir()) == [MANIFEST, "notes.txt"]
    assert not writer.is_written(0) and writer.manifest["key"] == other and not writer.complete
    assert ResidStore.open(tmp_path / "s").manifest["key"] == other


def test_overwrite_never_empties_a_folder_that_holds_no_store(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty and holds no manifest.json"):
        StoreWriter.open_or_create(tmp_path / "plain", manifest=dict(MANIFEST_FIELDS), n_texts=3, shard_texts=2, overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / MANIFEST).write_text(json.dumps({"format": "someone-else/1"}))
    (tmp_path / "other" / "shard-00000.safetensors").write_text("theirs")
    with pytest.raises(StoreMismatchError, match="is not an activation store manifest: refusing to overwrite"):
        StoreWriter.open_or_create(tmp_path / "other", manifest=dict(MANIFEST_FIELDS), n_texts=3, shard_texts=2, overwrite=True)
    assert sorted(path.name for path in (tmp_path / "other").iterdir()) == [MANIFEST, "shard-00000.safetensors"]


def test_a_shard_from_other_inputs_is_refused_when_finishing(tmp_path):
    other = StoreWriter.open_or_create(
        tmp_path / "other", manifest={**MANIFEST_FIELDS, "key": {**KEY, "tokens_and_positions": "x"}}, n_texts=3, shard_texts=2
    )
    other.write_shard(0, torch.zeros(2, 3, 2), torch.tensor([0, 0, 1]), torch.tensor([0, 4, 1]))
    writer, _ = write_two_shards(tmp_path / "s")
    writer.write_shard(1, -torch.ones(2, 1, 2), torch.tensor([2]), torch.tensor([7]))
    (tmp_path / "other" / "shard-00000.safetensors").replace(tmp_path / "s" / "shard-00000.safetensors")
    with pytest.raises(StoreMismatchError, match="shard-00000.safetensors was written for other inputs"):
        writer.finish()


def test_opening_something_else_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an activation store"):
        ResidStore.open(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(ValueError, match="unknown store format 'other/9'"):
        ResidStore.open(tmp_path)


def test_shard_texts_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="shard_texts must be at least 1"):
        StoreWriter.open_or_create(tmp_path / "s", manifest=dict(MANIFEST_FIELDS), n_texts=3, shard_texts=0)


def cut_short(path, input_hash: str, resid) -> None:
    """What a crash leaves of a file whose data had not reached the disk."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def with_rows_of_two_lengths(path, input_hash: str, resid) -> None:
    labels = {"text_index": torch.tensor([0, 0]), "position": torch.tensor([0, 4, 1])}
    save_file({"resid": resid, **labels}, path, metadata={"input_hash": input_hash, "texts": "0:2"})


def from_other_inputs(path, input_hash: str, resid) -> None:
    labels = {"text_index": torch.tensor([0, 0, 1]), "position": torch.tensor([0, 4, 1])}
    save_file({"resid": resid, **labels}, path, metadata={"input_hash": "c" * 64, "texts": "0:2"})


@pytest.mark.parametrize("damage", [cut_short, with_rows_of_two_lengths, from_other_inputs])
def test_a_damaged_shard_is_not_written_and_a_resumed_writer_computes_it_again(tmp_path, damage):
    writer, first = write_two_shards(tmp_path / "s")
    damage(tmp_path / "s" / "shard-00000.safetensors", writer.manifest["input_hash"], first)
    resumed = StoreWriter.open_or_create(tmp_path / "s", manifest=dict(MANIFEST_FIELDS), n_texts=3, shard_texts=2)
    assert not writer.is_written(0) and not resumed.is_written(0)
    resumed.write_shard(0, first, torch.tensor([0, 0, 1]), torch.tensor([0, 4, 1]))
    resumed.write_shard(1, -torch.ones(2, 1, 2), torch.tensor([2]), torch.tensor([7]))
    assert resumed.is_written(0) and resumed.is_written(1)
    torch.testing.assert_close(resumed.finish().load(), torch.cat([first, -torch.ones(2, 1, 2)], dim=1), atol=0, rtol=0)


def test_finishing_with_a_cut_short_shard_names_it(tmp_path):
    writer, _ = write_two_shards(tmp_path / "s")
    writer.write_shard(1, -torch.ones(2, 1, 2), torch.tensor([2]), torch.tensor([7]))
    path = tmp_path / "s" / "shard-00001.safetensors"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="shard-00001.safetensors is not a whole safetensors file"):
        writer.finish()
