"""Cache ``resid_post`` at every layer, at the token positions you ask for, batched, optionally on disk.

Layer index ``l`` means ``blocks.{l}.hook_resid_post``: the output of decoder block ``l``, which equals
Hugging Face ``hidden_states[l + 1]`` for every block but the last (HF returns that one after the final
norm; we return the block's own output). With ``embeddings=True`` the embedding stream
(``blocks.0.hook_resid_pre`` = HF ``hidden_states[0]``) comes first, so that index ``k`` of the result is
HF's state ``k``: the 29-state layout the Algoverse probing project used for Qwen3-0.6B, where its "layer 14" is our block 13.

That holds for RMSNorm models. For LayerNorm models (GPT-2, GPT-NeoX) in compatibility mode, ``resid_post`` at block
``l`` equals HF ``hidden_states[l + 1]`` minus its mean over d_model: the writing weights are centred, and LayerNorm is
blind to that mean, so every later computation and the logits are unchanged. With ``compat=False`` the bridge's stream
equals HF's itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Iterator, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge
from transformers import DynamicCache

from lens_pivotal.distributed import all_ranks, map_in_step, on_rank_zero, world
from lens_pivotal.distributed import shard as distributed_shard
from lens_pivotal.fingerprint import weights_fingerprint
from lens_pivotal.hook_points import attached_hook_points
from lens_pivotal.indices import resolve_index
from lens_pivotal.kv_cache import repeated_cache
from lens_pivotal.model import EMBEDDING_HOOK, StopForward, resid_post_hook
from lens_pivotal.resid.fastpath import hf_fast_path
from lens_pivotal.resid.store import ResidStore, StoreWriter
from lens_pivotal.tokens import Tokenization, token_ids

TextInput = Union[str, Tensor, Sequence[int]]
PositionInput = Union[int, Sequence[int]]
MIN_SHARED_PREFIX = 32  # tokens: shorter common prefixes are not worth a separate prefix pass
KEYED_LIBRARIES = ("lens-pivotal", "transformer-lens", "transformers", "torch")  # their versions change numerics


@dataclass(frozen=True)
class Layout:
    """Which hooks are read, in result order, and which block is the last that must run."""

    layers: list[int]
    embeddings: bool

    @property
    def hook_names(self) -> list[str]:
        """The TransformerLens hook read for each slot of the result's first axis."""
        names = [resid_post_hook(layer) for layer in self.layers]
        return [EMBEDDING_HOOK, *names] if self.embeddings else names


@dataclass(frozen=True)
class Rows:
    """Per text, the tokens up to its last kept position and the resolved (non-negative) positions to keep."""

    tokens: list[Tensor]
    positions: list[list[int]]

    @property
    def offsets(self) -> list[int]:
        """Index of each text's first row in the output; one extra entry holds the total."""
        offsets = [0]
        for kept in self.positions:
            offsets.append(offsets[-1] + len(kept))
        return offsets


def cache_resid_post(
    model: TransformerBridge,
    texts: Sequence[TextInput] | Int[Tensor, "n_texts seq"],
    positions: Sequence[PositionInput],
    *,
    layers: Sequence[int] | None = None,
    embeddings: bool = False,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float32,
    padding_side: str = "right",
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    shard_texts: int = 512,
    fast_path: bool = True,
    share_prefixes: bool = False,
    tokenization: Tokenization = "tokenizer",
    progress: bool = True,
) -> Float[Tensor, "n_layers n_rows d_model"] | ResidStore:
    """Residual stream after each requested block, at the requested token positions.

    Args:
        model: a TransformerLens model from :func:`lens_pivotal.load_model`.
        texts: strings, tokenized as the model's own tokenizer does (:mod:`lens_pivotal.tokens`), or token
            ids (1-D tensors or lists of ints, or one ``[n_texts, seq]`` tensor), used as given.
        positions: per text an int or a list of ints indexing that text's tokens; negatives count from
            the end.
        layers: blocks to read (default: all); negatives count from the last block.
        embeddings: also return the embedding stream, first (HF ``hidden_states[0]``).
        batch_size: texts per forward pass. Texts are sorted by length first to cut padding.
        dtype: dtype of the returned activations.
        padding_side: ``"right"`` or ``"left"``; results are the same either way.
        out: a directory for an on-disk store (safetensors shards + ``manifest.json``). A rerun with the
            same inputs resumes an interrupted store, and a finished one is reopened without computing. "The same
            inputs" is the manifest's ``key``, checked component by component: the model name; a fingerprint of its
            weights (:func:`lens_pivotal.fingerprint.weights_fingerprint`: every tensor's name, shape, dtype and
            a strided sample of its values, so a fine-tune saved at the same path, or an in-place edit, is caught);
            whether compatibility mode is on; the parameters' dtypes and ``dtype``; the hook points that have
            forward hooks attached when this is called (their names, not the functions); the hooks read
            (``layers``, ``embeddings``); a hash of the tokens and positions; and the versions of lens-pivotal,
            transformer-lens, transformers and torch. If any differs,
            :class:`~lens_pivotal.resid.store.StoreMismatchError` names the components that differ, and nothing
            is computed; a store written before the key existed is refused the same way. Under an initialised
            ``torch.distributed`` process group, call this on every rank with the same arguments: shards are dealt
            out round-robin, each rank writes its own, rank 0 lists them all in the manifest once every rank is
            done, and every rank returns the same store, equal to a one-process run. A rerun with any number of
            processes resumes. (Without ``out`` every rank computes every text.)
        overwrite: discard the store already at ``out`` (its manifest, shards and scratch files, and only if
            ``out`` holds a store manifest: any other non-empty directory is refused) and compute it afresh.
        shard_texts: texts per shard when writing to ``out``; peak memory is bounded by one shard.
        fast_path: run hook-free attention (as SDPA), MLPs and norms through the HF modules the bridge
            wraps (see :mod:`lens_pivotal.resid.fastpath`); ``False`` keeps the bridge's own eager path.
        share_prefixes: (causal models) texts that start with the same ``MIN_SHARED_PREFIX`` or more tokens,
            such as several solutions of one prompt, run that common prefix once and continue from its KV cache;
            their batches are right-padded whatever ``padding_side`` says. Results are the same either way.
        tokenization: ``"tokenizer"`` (default) or ``"transformer_lens"`` (``model.to_tokens``, BOS per
            ``cfg.default_prepend_bos``); see :mod:`lens_pivotal.tokens`.
        progress: show a tqdm progress bar.

    Returns:
        ``[n_layers, n_rows, d_model]`` with rows in text order, then position order; or, with ``out``,
        the :class:`~lens_pivotal.resid.store.ResidStore` holding the same rows.
    """
    rows = _prepare_rows(model, texts, positions, tokenization)
    layout = Layout(resolve_layers(model, layers), embeddings)
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    causal = getattr(model.cfg, "attention_dir", "causal") == "causal"
    run = _BatchRunner(model, layout, dtype, padding_side, MIN_SHARED_PREFIX if share_prefixes and causal else None)
    kernels = hf_fast_path(model) if fast_path else contextlib.nullcontext()
    if out is None:
        with kernels, _progress_bar(len(rows.tokens), progress) as bar:
            return run.chunk(rows, range(len(rows.tokens)), batch_size, bar.update)
    manifest = _manifest(model, layout, dtype, rows)
    with kernels:
        return _write_store(run, rows, batch_size, progress, out, manifest, shard_texts, overwrite)


def _write_store(
    run: _BatchRunner,
    rows: Rows,
    batch_size: int,
    progress: bool,
    out: str | os.PathLike,
    manifest: dict,
    shard_texts: int,
    overwrite: bool,
) -> ResidStore:
    """Compute this rank's missing shards into the store (all shards without a process group), then finish it.

    Under a process group the ranks meet after every shard (:func:`~lens_pivotal.distributed.map_in_step`): a
    failure on one rank is raised on every rank once the shards in progress are done.
    """

    def open_writer(overwrite: bool) -> StoreWriter:
        return StoreWriter.open_or_create(
            out, manifest=manifest, n_texts=len(rows.tokens), shard_texts=shard_texts, overwrite=overwrite
        )

    # rank 0 creates (or replaces) the store before any other rank opens it; they must not discard it again
    created = on_rank_zero(lambda: open_writer(overwrite))
    writer = all_ranks(lambda: created or open_writer(False))
    shards = list(enumerate(writer.ranges()))
    mine = distributed_shard(shards)
    written = all_ranks(lambda: {shard for shard, _ in mine if writer.is_written(shard)})
    single = world()[1] == 1
    done = sum(len(texts) for shard, texts in mine if shard in written)
    with _progress_bar(sum(len(texts) for _, texts in mine), progress, initial=done) as bar:

        def write(item: tuple[int, range]) -> None:
            shard, texts = item
            if shard not in written:
                acts = run.chunk(rows, texts, batch_size, bar.update)
                writer.write_shard(shard, acts, *_row_labels(rows, texts), record=single)

        map_in_step(write, shards)
    on_rank_zero(writer.finish)
    return ResidStore(writer.directory)


def _progress_bar(total: int, enabled: bool, initial: int = 0) -> tqdm:
    return tqdm(total=total, initial=initial, disable=not enabled, unit="text", desc="resid_post")


def _prepare_rows(model: TransformerBridge, texts: object, positions: object, tokenization: Tokenization) -> Rows:
    if isinstance(texts, Tensor):
        if texts.ndim != 2:
            raise ValueError(f"a token tensor for texts must be [n_texts, seq], got shape {tuple(texts.shape)}")
        texts = list(texts)
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError("texts must be a list of strings or token sequences (wrap a single text in a list)")
    if isinstance(positions, (int, str)) or not isinstance(positions, Sequence):
        raise TypeError("positions must be a list with one int or list of ints per text")
    if len(texts) == 0:
        raise ValueError("texts is empty: nothing to cache")
    if len(texts) != len(positions):
        raise ValueError(f"texts and positions differ in length: {len(texts)} texts, {len(positions)} positions")
    tokens = [_tokenize(model, text, index, tokenization) for index, text in enumerate(texts)]
    resolved = [_resolve_positions(spec, len(ids), index) for index, (spec, ids) in enumerate(zip(positions, tokens))]
    if getattr(model.cfg, "attention_dir", "causal") == "causal":
        # A causal model's state at position p never depends on later tokens, so they are not computed.
        tokens = [ids[: max(kept) + 1] for ids, kept in zip(tokens, resolved)]
    return Rows(tokens, resolved)


def _tokenize(model: TransformerBridge, text: TextInput, index: int, tokenization: Tokenization) -> Tensor:
    if isinstance(text, Tensor) and text.ndim == 2 and text.shape[0] == 1:
        text = text[0]
    return token_ids(model, text, tokenization=tokenization, what=f"text {index}", device="cpu")


def _resolve_positions(spec: PositionInput, length: int, index: int) -> list[int]:
    wanted = [spec] if isinstance(spec, int) and not isinstance(spec, bool) else spec
    if isinstance(wanted, (str, bytes)) or not isinstance(wanted, Sequence) or len(wanted) == 0:
        raise TypeError(f"positions[{index}] must be an int or a non-empty list of ints, got {spec!r}")
    resolved = []
    for position in wanted:
        if not isinstance(position, int) or isinstance(position, bool):
            raise TypeError(f"positions[{index}] holds {position!r}, which is not an int")
        resolved.append(resolve_index(position, length, f"position {position}", f" for text {index}, which has {length} tokens"))
    return resolved


def resolve_layers(model: TransformerBridge, layers: Sequence[int] | None) -> list[int]:
    """Validated block indices (default: all), negatives counted from the last block, in the order given."""
    n_layers = model.cfg.n_layers
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, int) or len(layers) == 0:
        raise ValueError(f"layers must be a non-empty list of block indices, got {layers!r}")
    resolved = [resolve_index(layer, n_layers, f"layer {layer!r}", f": the model has {n_layers} blocks") for layer in layers]
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"layers has repeats: {list(layers)}")
    return resolved


def _row_labels(rows: Rows, text_range: range) -> tuple[Tensor, Tensor]:
    text_index = [index for index in text_range for _ in rows.positions[index]]
    positions = [position for index in text_range for position in rows.positions[index]]
    return torch.tensor(text_index, dtype=torch.long), torch.tensor(positions, dtype=torch.long)


def _manifest(model: TransformerBridge, layout: Layout, dtype: torch.dtype, rows: Rows) -> dict[str, Any]:
    """A new store's manifest: what it holds, and the ``key`` a rerun must match to reopen it."""
    return {
        "model_name": model.cfg.model_name,
        "d_model": model.cfg.d_model,
        "n_model_layers": model.cfg.n_layers,
        "layers": layout.layers,
        "embeddings": layout.embeddings,
        "hook_names": layout.hook_names,
        "dtype": _dtype_name(dtype),
        "n_texts": len(rows.tokens),
        "n_rows": rows.offsets[-1],
        "key": _store_key(model, layout, dtype, rows),
    }


def _store_key(model: TransformerBridge, layout: Layout, dtype: torch.dtype, rows: Rows) -> dict[str, Any]:
    """Everything the stored rows depend on, one named component each (the names appear in mismatch errors)."""
    return {
        "model_name": model.cfg.model_name,
        "weights_fingerprint": weights_fingerprint(model),
        "compatibility_mode": bool(model.compatibility_mode),
        "parameter_dtypes": sorted({_dtype_name(parameter.dtype) for parameter in model.parameters()}),
        "activation_dtype": _dtype_name(dtype),
        "hooks_attached": attached_hook_points(model),
        "hooks_read": layout.hook_names,
        "tokens_and_positions": _inputs_hash(rows),
        "versions": {name: _version(name) for name in KEYED_LIBRARIES},
    }


def _inputs_hash(rows: Rows) -> str:
    digest = hashlib.sha256()
    for ids, kept in zip(rows.tokens, rows.positions):
        digest.update(ids.numpy().tobytes())
        digest.update(json.dumps(kept).encode())
    return digest.hexdigest()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:  # e.g. lens_pivotal imported from a source tree it was never installed from
        return "not installed"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class _Prefix:
    """A token prefix shared by several texts: its length, its KV cache, and its states at the kept positions."""

    length: int
    kv_cache: DynamicCache
    states: Float[Tensor, "n_layers n_kept d_model"]
    columns: dict[int, int]


class _BatchRunner:
    """Runs padded batches through the model, gathering the kept rows on the device."""

    def __init__(
        self, model: TransformerBridge, layout: Layout, dtype: torch.dtype, padding_side: str, min_shared: int | None = None
    ) -> None:
        self.model = model
        self.layout = layout
        self.dtype = dtype
        self.padding_side = padding_side
        self.min_shared = min_shared
        self.device = next(model.parameters()).device
        pad = model.tokenizer.pad_token_id if model.tokenizer is not None else None
        self.pad_id = pad if pad is not None else 0

    def chunk(
        self, rows: Rows, text_range: range, batch_size: int, advance: Callable[[int], object]
    ) -> Float[Tensor, "n_layers n_rows d_model"]:
        """Activations for the texts in ``text_range``, rows in text then position order."""
        offsets = rows.offsets
        first = offsets[text_range.start]
        result = torch.empty(
            len(self.layout.hook_names), offsets[text_range.stop] - first, self.model.cfg.d_model, dtype=self.dtype
        )
        for members, prefix_length in _prefix_groups(rows, text_range, self.min_shared):
            prefix = self.prefix(rows, members, prefix_length) if prefix_length else None
            for batch in _length_sorted_batches(rows, members, batch_size):
                destination = torch.tensor(
                    [offsets[index] - first + k for index in batch for k in range(len(rows.positions[index]))]
                )
                result[:, destination] = self.batch(rows, batch, prefix).cpu()
                advance(len(batch))
        return result

    def prefix(self, rows: Rows, members: list[int], length: int) -> _Prefix:
        """Run the first ``length`` tokens shared by ``members`` once, keeping the KV cache and the kept states."""
        kept = sorted({position for index in members for position in rows.positions[index] if position < length})
        ids = rows.tokens[members[0]][None, :length].to(self.device)
        kv_cache = DynamicCache()
        states = self._forward(ids, None, torch.zeros(len(kept), dtype=torch.long), torch.tensor(kept, dtype=torch.long), kv_cache)
        return _Prefix(length, kv_cache, states, {position: column for column, position in enumerate(kept)})

    def batch(self, rows: Rows, batch: list[int], prefix: _Prefix | None = None) -> Float[Tensor, "n_layers n_kept d_model"]:
        """One forward pass over ``batch`` (text indices), stopped after the deepest requested block; with a
        ``prefix``, only the tokens after it run, on a copy of its KV cache."""
        start = prefix.length if prefix else 0
        ids, mask, row_index, position_index = self._pad(rows, batch, start)
        if prefix is None:
            return self._forward(ids, mask, row_index, position_index)
        kv_cache = repeated_cache(prefix.kv_cache, len(batch))
        mask = torch.cat([torch.ones(len(batch), start, dtype=mask.dtype, device=mask.device), mask], dim=1)
        suffix_states = self._forward(ids, mask, row_index, position_index, kv_cache)
        states = torch.cat([prefix.states, suffix_states], dim=1)
        n_prefix, order, suffix_column = len(prefix.columns), [], 0
        for index in batch:
            for position in rows.positions[index]:
                if position < start:
                    order.append(prefix.columns[position])
                else:
                    order.append(n_prefix + suffix_column)
                    suffix_column += 1
        return states[:, torch.tensor(order, device=states.device)]

    @torch.inference_mode()
    def _forward(
        self, ids: Tensor, mask: Tensor | None, row_index: Tensor, position_index: Tensor, kv_cache: DynamicCache | None = None
    ) -> Float[Tensor, "n_layers n_kept d_model"]:
        gathered: dict[str, Tensor] = {}
        deepest = max(self.layout.layers)

        def keep(name: str, stop: bool) -> Callable:
            def hook(resid: Tensor, hook: object) -> Tensor:
                gathered[name] = resid[row_index.to(resid.device), position_index.to(resid.device)].to(self.dtype)
                if stop:
                    raise StopForward
                return resid

            return hook

        fwd_hooks = [(name, keep(name, name == resid_post_hook(deepest))) for name in self.layout.hook_names]
        cache_arguments = {"past_key_values": kv_cache, "use_cache": True} if kv_cache is not None else {"use_cache": False}
        with self.model.hooks(fwd_hooks=fwd_hooks):
            try:
                self.model(ids, attention_mask=mask, **cache_arguments)
            except StopForward:
                pass
        return torch.stack([gathered[name] for name in self.layout.hook_names])

    def _pad(self, rows: Rows, batch: list[int], start: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Ids and mask of the batch's tokens from ``start`` on, and where its kept positions (from ``start`` on) land."""
        width = max(len(rows.tokens[index]) for index in batch) - start
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        left = self.padding_side == "left" and start == 0
        row_index, position_index = [], []
        for row, index in enumerate(batch):
            tokens = rows.tokens[index][start:]
            offset = width - len(tokens) if left else 0
            ids[row, offset : offset + len(tokens)] = tokens
            mask[row, offset : offset + len(tokens)] = 1
            kept = [position - start for position in rows.positions[index] if position >= start]
            row_index += [row] * len(kept)
            position_index += [offset + position for position in kept]
        on_device = (ids.to(self.device), mask.to(self.device))
        return (*on_device, torch.tensor(row_index, device=self.device), torch.tensor(position_index, device=self.device))


def _prefix_groups(rows: Rows, text_range: range, min_shared: int | None) -> Iterator[tuple[list[int], int]]:
    """``(texts, shared prefix length)``: groups of texts that share at least ``min_shared`` leading tokens (each
    keeping at least one token of its own), then the rest with prefix length 0."""
    if not min_shared:
        yield list(text_range), 0
        return
    ordered = sorted(text_range, key=lambda index: rows.tokens[index].tolist())
    alone: list[int] = []
    group: list[int] = []
    shared = 0
    for index in ordered:
        common = _common_length(rows.tokens[group[0]], rows.tokens[index]) if group else 0
        limit = min([len(rows.tokens[member]) for member in (*group, index)]) - 1
        if group and min(shared, common, limit) >= min_shared:
            group.append(index)
            shared = min(shared, common, limit)
            continue
        if len(group) > 1:
            yield group, shared
        else:
            alone += group
        group, shared = [index], len(rows.tokens[index]) - 1
    if len(group) > 1:
        yield group, shared
    else:
        alone += group
    if alone:
        yield alone, 0


def _common_length(first: Tensor, second: Tensor) -> int:
    length = min(len(first), len(second))
    differs = torch.nonzero(first[:length] != second[:length])
    return int(differs[0]) if len(differs) else length


def _length_sorted_batches(rows: Rows, texts: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    ordered = sorted(texts, key=lambda index: len(rows.tokens[index]), reverse=True)
    for start in range(0, len(ordered), batch_size):
        yield ordered[start : start + batch_size]
