"""An on-disk store of cached activations: safetensors shards plus a JSON manifest.

Each shard holds the rows of a contiguous range of texts: ``resid`` ``[n_layers, rows, d_model]``,
``text_index`` and ``position`` ``[rows]``. A shard is written to a temporary file and renamed (so it is
there whole or not at all, and flushed to disk first), then the manifest is rewritten the same way, so an
interrupted run loses at most the shards in flight and a rerun computes only the shards whose files are missing or
not whole (cut short by a crash, or made from other inputs): no row is lost or written twice. Several processes can
write one store (one shard each at a time, see :func:`lens_pivotal.cache_resid_post` under ``torchrun``); the
manifest lists them all once finished.

The manifest's ``key`` records everything the rows depend on, one named component each (the model's weights
fingerprint, the texts' tokens, ...); a writer reopens a store only when every component matches, and its error
names those that differ. ``input_hash``, the hash of the key, is stamped on every shard too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from lens_pivotal._io import atomic_file, atomic_write_text
from lens_pivotal.model import block_of, resid_post_hook

FORMAT = "lens_pivotal.resid_store/1"
MANIFEST = "manifest.json"
STORE_FILE_PATTERNS = ("shard-*.safetensors", ".shard-*", f".{MANIFEST}.*")  # shards and unfinished scratch files
REFUSAL_ADVICE = "pass a new directory, or overwrite=True to discard this store and compute it afresh"


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
        """All rows as one tensor, its first axis in ``hook_names`` order; ``slots`` picks entries of that axis by
        position (indices into ``hook_names``, not block numbers: see :meth:`slot_of`)."""
        wanted = list(range(len(self.hook_names))) if slots is None else list(slots)
        parts = [self._read(shard, "resid", wanted) for shard in self.manifest["shards"]]
        if not parts:
            return torch.empty(len(wanted), 0, self.manifest["d_model"])
        return torch.cat(parts, dim=1)

    def layer(self, layer: int | str) -> Float[Tensor, "n_rows d_model"]:
        """The rows of block ``layer``'s output (``blocks.{layer}.hook_resid_post``, negatives counting from the
        model's last block), or of the hook named (``"blocks.0.hook_resid_pre"``: the embeddings), reading only that
        slice of each shard."""
        return self.load([self.slot_of(layer)])[0]

    def slot_of(self, layer: int | str) -> int:
        """The entry of :meth:`load`'s first axis holding block ``layer`` (or the hook named).

        Raises:
            KeyError: the store does not hold that block or hook (the message lists those it holds).
        """
        name = self._hook_name(layer)
        if name not in self.hook_names:
            raise KeyError(f"{self.directory} holds no {name}: it holds {self._held()}")
        return self.hook_names.index(name)

    def _hook_name(self, layer: int | str) -> str:
        if isinstance(layer, str):
            return layer
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer must be a block number or a hook name, got {type(layer).__name__}")
        n_layers = self.manifest.get("n_model_layers")  # absent only from hand-made manifests
        return resid_post_hook(layer + n_layers if layer < 0 and n_layers else layer)

    def _held(self) -> str:
        blocks = [block for block in map(block_of, self.hook_names) if block is not None]
        others = [name for name in self.hook_names if block_of(name) is None]
        return " and ".join([*([f"blocks {blocks}"] if blocks else []), *others])

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
    """Writes shards for a store and keeps its manifest current, resuming where a previous run stopped.

    Shard ``k`` holds texts ``[k * shard_texts, (k + 1) * shard_texts)`` and is done once its file is in place and
    whole (:meth:`is_written`), so processes can write disjoint shards of one store side by side; the manifest lists
    every shard once :meth:`finish` has checked them all.
    """

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest

    @classmethod
    def open_or_create(
        cls,
        directory: str | os.PathLike,
        *,
        manifest: dict[str, Any],
        n_texts: int,
        shard_texts: int,
        overwrite: bool = False,
    ) -> "StoreWriter":
        """Resume the store at ``directory`` if its ``key`` equals ``manifest["key"]``, else start a new one.

        ``manifest`` holds the fields of a new store's manifest, ``key`` (a dict of named components) among them.
        With ``overwrite``, a store already there is discarded first (its manifest, shards and scratch files:
        nothing else in ``directory`` is touched).

        Raises:
            StoreMismatchError: ``directory`` holds a store of another key (the message names the components
                that differ), or one written before stores had a key.
            FileExistsError: ``directory`` is not empty and holds no store.
        """
        if shard_texts < 1:
            raise ValueError(f"shard_texts must be at least 1, got {shard_texts}")
        directory = Path(directory)
        existing = directory / MANIFEST
        if existing.is_file():
            previous = json.loads(existing.read_text())
            if not overwrite:
                _check_same_key(directory, previous, manifest["key"])
                return cls(directory, previous)
            _discard_store(directory, previous)
        elif directory.exists() and any(directory.iterdir()):
            raise FileExistsError(f"{directory} exists, is not empty and holds no {MANIFEST}; choose a new directory")
        directory.mkdir(parents=True, exist_ok=True)
        fields = {"format": FORMAT, **manifest, "input_hash": _key_hash(manifest["key"])}
        writer = cls(directory, {**fields, "shard_texts": shard_texts, "shards": [], "complete": False})
        writer._save_manifest()
        return writer

    @property
    def complete(self) -> bool:
        """Whether :meth:`finish` has listed every shard."""
        return bool(self.manifest["complete"])

    def ranges(self) -> list[range]:
        """The texts of each shard, in order (shard ``k`` is ``ranges()[k]``)."""
        step, total = self.manifest["shard_texts"], self.manifest["n_texts"]
        return [range(start, min(start + step, total)) for start in range(0, total, step)]

    def is_written(self, shard: int) -> bool:
        """Whether shard ``shard``'s file is in place, whole and made from these inputs: a file cut short (a crash
        before the data reached the disk) or written for other inputs is not, and the shard is computed again."""
        try:
            self._written_rows(shard)
        except (FileNotFoundError, ValueError):  # StoreMismatchError is a ValueError
            return False
        return True

    def write_shard(
        self, shard: int, resid: Tensor, text_index: Tensor, position: Tensor, *, record: bool = True
    ) -> None:
        """Write one shard atomically; with ``record`` (one writing process), also list it in the manifest."""
        texts = self.ranges()[shard]
        tensors = {"resid": resid.contiguous(), "text_index": text_index, "position": position}
        with atomic_file(self.directory / _shard_file(shard)) as scratch:
            save_file(tensors, scratch, metadata=self._shard_metadata(texts))
        if record:
            listed = [entry for entry in self.manifest["shards"] if entry["file"] != _shard_file(shard)]
            self.manifest["shards"] = [*listed, _shard_entry(shard, texts, resid.shape[1])]
            self._save_manifest()

    def finish(self) -> ResidStore:
        """List every shard in the manifest (checking that each is in place and was made from these inputs),
        mark the store complete and open it for reading."""
        if not self.complete:
            self.manifest["shards"] = [
                _shard_entry(shard, texts, self._written_rows(shard)) for shard, texts in enumerate(self.ranges())
            ]
            self.manifest["complete"] = True
            self._save_manifest()
        return ResidStore(self.directory)

    def _written_rows(self, shard: int) -> int:
        """The rows in shard ``shard``'s file, checked to be whole and made from these inputs.

        Raises:
            FileNotFoundError: the file is missing.
            StoreMismatchError: it was written for other inputs or texts.
            ValueError: it is not a whole shard (cut short, or its tensors' shapes are not a shard's).
        """
        path, texts = self.directory / _shard_file(shard), self.ranges()[shard]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: shard {shard} (texts {texts.start}-{texts.stop - 1}) was never written")
        metadata, shapes = _shard_header(path)
        expected = self._shard_metadata(texts)
        # shards written by earlier versions carry no metadata
        if metadata and any(metadata.get(key) != value for key, value in expected.items()):
            raise StoreMismatchError(f"{path} was written for other inputs or texts ({metadata}); expected {expected}")
        rows = next(iter(shapes.get("text_index", [])), -1)
        n_hooks, d_model = len(self.manifest["hook_names"]), self.manifest["d_model"]
        whole = {"resid": [n_hooks, rows, d_model], "text_index": [rows], "position": [rows]}
        if shapes != whole:
            raise ValueError(f"{path} holds tensors of shapes {shapes}, not a shard's {whole}")
        return rows

    def _shard_metadata(self, texts: range) -> dict[str, str]:
        """What every shard file records of its inputs: the store's ``input_hash`` and its texts."""
        return {"input_hash": self.manifest["input_hash"], "texts": f"{texts.start}:{texts.stop}"}

    def _save_manifest(self) -> None:
        atomic_write_text(self.directory / MANIFEST, json.dumps(self.manifest, indent=1))


def _key_hash(key: dict[str, Any]) -> str:
    """sha256 (hex) of a store key's canonical JSON: the ``input_hash`` of the manifest and of every shard."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _check_same_key(directory: Path, previous: dict[str, Any], key: dict[str, Any]) -> None:
    if "key" not in previous:
        raise StoreMismatchError(
            f"{directory} holds a store written before stores recorded the model's weights (its {MANIFEST} has no "
            f"'key'), so its rows may come from other weights: {REFUSAL_ADVICE}"
        )
    stored = previous["key"]
    names = [name for name in {**stored, **key} if stored.get(name) != key.get(name)]
    if names:
        differences = "; ".join(_difference(name, stored.get(name), key.get(name)) for name in names)
        raise StoreMismatchError(f"{directory} holds a store made from other inputs ({differences}): {REFUSAL_ADVICE}")


def _difference(name: str, stored: Any, now: Any) -> str:
    """``"weights fingerprint: stored 3ec319769c7b…, now aa5f06ebc791…"``; for dicts, only the entries that differ."""
    label = name.replace("_", " ")
    if isinstance(stored, dict) and isinstance(now, dict):
        changed = [entry for entry in {**stored, **now} if stored.get(entry) != now.get(entry)]
        return "; ".join(_difference(f"{name} {entry}", stored.get(entry), now.get(entry)) for entry in changed)
    return f"{label}: stored {_shown(stored)}, now {_shown(now)}"


def _shown(value: Any) -> str:
    if not isinstance(value, str):
        return json.dumps(value)
    return f"{value[:12]}…" if len(value) == 64 else value  # a sha256 hex digest: its start is enough to tell


def _discard_store(directory: Path, previous: dict[str, Any]) -> None:
    """Delete the store's own files, its manifest last (so a failure part-way leaves a manifest to discard again)."""
    if previous.get("format") != FORMAT:
        raise StoreMismatchError(
            f"{directory / MANIFEST} is not an activation store manifest: refusing to overwrite {directory}"
        )
    for pattern in STORE_FILE_PATTERNS:
        for path in directory.glob(pattern):
            path.unlink()
    (directory / MANIFEST).unlink()


def _shard_header(path: Path) -> tuple[dict[str, str], dict[str, list[int]]]:
    """A shard file's metadata and the shape of each tensor; ``ValueError`` if it is not a whole safetensors file."""
    try:
        with safe_open(path, framework="pt") as handle:
            return handle.metadata() or {}, {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except SafetensorError as error:
        raise ValueError(f"{path} is not a whole safetensors file (cut short by a crash?): {error}") from None


def _shard_file(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


def _shard_entry(shard: int, texts: range, rows: int) -> dict[str, Any]:
    return {"file": _shard_file(shard), "texts": [texts.start, texts.stop], "rows": rows}
