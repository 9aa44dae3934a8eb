"""ResidStore and StoreWriter on their own: layout on disk, partial stores, and bad directories."""

from __future__ import annotations

import json

import pytest
import torch

from lens_pivotal.resid.store import MANIFEST, ResidStore, StoreMismatchError, StoreWriter

MANIFEST_FIELDS = {"input_hash": "abc", "n_texts": 3, "n_rows": 4, "d_model": 2, "hook_names": ["h0", "h1"]}


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
    torch.testing.assert_close(store.layer(1), torch.cat([first, second], dim=1)[1])
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


def test_a_shard_from_other_inputs_is_refused_when_finishing(tmp_path):
    other = StoreWriter.open_or_create(tmp_path / "other", manifest={**MANIFEST_FIELDS, "input_hash": "xyz"}, n_texts=3, shard_texts=2)
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
