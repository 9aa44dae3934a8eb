"""Atomic files and directories: a save over an earlier save replaces it whole or is refused, never half-kept; a file
is on disk before it is renamed into place."""

from __future__ import annotations

import os

import pytest
import torch

from lens_pivotal._io import atomic_cache_dir, atomic_dir, atomic_write_text
from lens_pivotal.lenses import AffineMap
from lens_pivotal.probes import LayerProbes, ProbeConfig
from lens_pivotal.steering import SteeringVectors
from lens_pivotal.steering.vectors import SteeringConfig


def write_folder(target, files, **options):
    with atomic_dir(target, **options) as scratch:
        for name, text in files.items():
            (scratch / name).write_text(text)


def test_an_existing_folder_is_refused_and_kept(tmp_path):
    write_folder(tmp_path / "out", {"a.txt": "old"})
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_folder(tmp_path / "out", {"a.txt": "new"})
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["a.txt"]
    assert (tmp_path / "out" / "a.txt").read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]  # no scratch left behind


def test_overwrite_replaces_the_whole_folder(tmp_path):
    write_folder(tmp_path / "out", {"a.txt": "old", "stale.txt": "from the first run"})
    write_folder(tmp_path / "out", {"a.txt": "new"}, overwrite=True)
    assert {path.name: path.read_text() for path in (tmp_path / "out").iterdir()} == {"a.txt": "new"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_a_failed_overwrite_keeps_the_old_folder(tmp_path):
    write_folder(tmp_path / "out", {"a.txt": "old"})
    with pytest.raises(RuntimeError, match="midway"), atomic_dir(tmp_path / "out", overwrite=True) as scratch:
        (scratch / "a.txt").write_text("half")
        raise RuntimeError("midway")
    assert (tmp_path / "out" / "a.txt").read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_an_empty_folder_is_written_into(tmp_path):
    (tmp_path / "out").mkdir()
    write_folder(tmp_path / "out", {"a.txt": "new"})
    assert (tmp_path / "out" / "a.txt").read_text() == "new"


def test_a_cache_entry_finished_first_by_another_process_is_kept(tmp_path):
    with atomic_cache_dir(tmp_path / "entry") as scratch:
        (scratch / "a.txt").write_text("ours")
        write_folder(tmp_path / "entry", {"a.txt": "theirs"})  # another process renames its copy in first
    assert (tmp_path / "entry" / "a.txt").read_text() == "theirs"


def _probes(value: float) -> LayerProbes:
    probes = LayerProbes(ProbeConfig("m", 4, 2, ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]))
    probes.weight, probes.fitted = torch.full((2, 4), value), True
    return probes


def _vectors(value: float) -> SteeringVectors:
    config = SteeringConfig("m", 4, 2, ["blocks.0.hook_resid_post"], "mean_difference", "positive", 3, 3, [1.0])
    return SteeringVectors(torch.full((1, 4), value), config)


SAVED = {
    "probes": (_probes, LayerProbes.load, lambda probes: probes.weight),
    "vectors": (_vectors, SteeringVectors.load, lambda vectors: vectors.vectors),
    "affine map": (lambda value: AffineMap(torch.full((4, 4), value), torch.zeros(4)), AffineMap.load, lambda m: m.weight),
}


@pytest.mark.parametrize("kind", SAVED)
def test_saving_over_a_save_is_refused_unless_overwrite_and_then_loads_the_new_one(tmp_path, kind):
    make, load, values = SAVED[kind]
    make(1.0).save(tmp_path / "saved")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make(2.0).save(tmp_path / "saved")
    assert torch.all(values(load(tmp_path / "saved")) == 1.0)
    make(2.0).save(tmp_path / "saved", overwrite=True)
    assert torch.all(values(load(tmp_path / "saved")) == 2.0)


def test_a_file_reaches_the_disk_before_it_is_renamed_into_place_and_the_rename_after(tmp_path, monkeypatch):
    """The durable-rename recipe: fsync the new file, rename it over the target, fsync the folder."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(source, target) -> None:
        events.append(("replace", os.stat(source).st_ino))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write_text(tmp_path / "a.txt", "text")
    written, folder = (tmp_path / "a.txt").stat().st_ino, tmp_path.stat().st_ino
    assert events == [("fsync", written), ("replace", written), ("fsync", folder)]
    assert (tmp_path / "a.txt").read_text() == "text"
