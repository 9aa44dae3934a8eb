"""An on-disk store of cached activations: safetensors shards plus a JSON manifest.

Each shard holds the rows of a contiguous range of texts: ``resid`` ``[n_layers, rows, d_model]``,
``text_index`` and ``position`` ``[rows]``. A shard is written to a temporary file and renamed, then the
manifest is rewritten the same way, so an interrupted run loses at most the shard in flight and a rerun
continues after the last shard the manifest lists: no row is lost or written twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from lens_pivotal._io import atomic_file, atomic_write_text

FORMAT = "lens_pivotal.resid_store/1"
MANIFEST = "manifest.json"


class StoreMismatchError(ValueError):
    """An existing store was made from other inputs than the ones given now."""


class ResidStore:
    """A finished (or partly written) store of ``resid_post`` rows, read lazily from its shards."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        path = self.directory / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{self.directory} is not an activation store: it has no {MANIFEST}")
        self.manifest: dict[str, Any] = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown store format {self.manifest.get('format')!r}, expected {FORMAT!r}")

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "ResidStore":
        """Open the store written by ``cache_resid_post(..., out=directory)``."""
        return cls(directory)

    @property
    def complete(self) -> bool:
        """Whether every text's rows have been written."""
        return bool(self.manifest["complete"])

    @property
    def hook_names(self) -> list[str]:
        """The hook behind each slot of the first axis of :meth:`load`."""
        return list(self.manifest["hook_names"])

    def __len__(self) -> int:
        return sum(shard["rows"] for shard in self.manifest["shards"])

    def load(self, slots: Sequence[int] | None = None) -> Float[Tensor, "n_layers n_rows d_model"]:
        """All rows as one tensor; ``slots`` picks entries of the first axis (indices into ``hook_names``)."""
        wanted = list(range(len(self.hook_names))) if slots is None else list(slots)
        parts = [self._read(shard, "resid", wanted) for shard in self.manifest["shards"]]
        if not parts:
            return torch.empty(len(wanted), 0, self.manifest["d_model"])
        return torch.cat(parts, dim=1)

    def layer(self, slot: int) -> Float[Tensor, "n_rows d_model"]:
        """The rows of one slot of the first axis, reading only that slice of each shard."""
        return self.load([slot])[0]

    @property
    def text_index(self) -> Int[Tensor, " n_rows"]:
        """For each row, the index of the text it came from."""
        return self._labels("text_index")

    @property
    def positions(self) -> Int[Tensor, " n_rows"]:
        """For each row, its (non-negative) token position in its text."""
        return self._labels("position")

    def iter_shards(self) -> Iterator[dict[str, Tensor]]:
        """Each shard's tensors in order, one shard in memory at a time."""
        for shard in self.manifest["shards"]:
            with safe_open(self.directory / shard["file"], framework="pt") as handle:
                yield {key: handle.get_tensor(key) for key in handle.keys()}

    def _labels(self, key: str) -> Tensor:
        parts = [self._read(shard, key) for shard in self.manifest["shards"]]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)

    def _read(self, shard: dict, key: str, slots: list[int] | None = None) -> Tensor:
        with safe_open(self.directory / shard["file"], framework="pt") as handle:
            if slots is None:
                return handle.get_tensor(key)
            return torch.stack([handle.get_slice(key)[slot] for slot in slots])

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return f"ResidStore({str(self.directory)!r}, rows={len(self)}, hooks={len(self.hook_names)}, {state})"


class StoreWriter:
    """Writes shards for a store and keeps its manifest current, resuming where a previous run stopped."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest

    @classmethod
    def open_or_create(
        cls, directory: str | os.PathLike, *, manifest: dict[str, Any], n_texts: int, shard_texts: int
    ) -> "StoreWriter":
        """Resume the store at ``directory`` if it was made from the same inputs, else start a new one."""
        if shard_texts < 1:
            raise ValueError(f"shard_texts must be at least 1, got {shard_texts}")
        directory = Path(directory)
        existing = directory / MANIFEST
        if existing.is_file():
            previous = json.loads(existing.read_text())
            if previous.get("input_hash") != manifest["input_hash"]:
                raise StoreMismatchError(
                    f"{directory} already holds a store made from other inputs (model, texts, positions, layers "
                    "or dtype differ); choose a new directory or delete it"
                )
            return cls(directory, previous)
        if directory.exists() and any(directory.iterdir()):
            raise FileExistsError(f"{directory} exists, is not empty and holds no {MANIFEST}; choose a new directory")
        directory.mkdir(parents=True, exist_ok=True)
        writer = cls(directory, {"format": FORMAT, **manifest, "shard_texts": shard_texts, "shards": [], "complete": False})
        writer._save_manifest()
        return writer

    @property
    def texts_done(self) -> int:
        """How many texts the finished shards cover."""
        shards = self.manifest["shards"]
        return shards[-1]["texts"][1] if shards else 0

    def pending_ranges(self) -> Iterator[range]:
        """The text ranges still to compute, one per shard."""
        step, total = self.manifest["shard_texts"], self.manifest["n_texts"]
        for start in range(self.texts_done, total, step):
            yield range(start, min(start + step, total))

    def write_shard(self, texts: range, resid: Tensor, text_index: Tensor, position: Tensor) -> None:
        """Write one shard atomically, then record it in the manifest."""
        name = f"shard-{len(self.manifest['shards']):05d}.safetensors"
        tensors = {"resid": resid.contiguous(), "text_index": text_index, "position": position}
        with atomic_file(self.directory / name) as scratch:
            save_file(tensors, scratch)
        self.manifest["shards"].append({"file": name, "texts": [texts.start, texts.stop], "rows": resid.shape[1]})
        self._save_manifest()

    def finish(self) -> ResidStore:
        """Mark the store complete and open it for reading."""
        if not self.manifest["complete"]:
            self.manifest["complete"] = True
            self._save_manifest()
        return ResidStore(self.directory)

    def _save_manifest(self) -> None:
        atomic_write_text(self.directory / MANIFEST, json.dumps(self.manifest, indent=1))
