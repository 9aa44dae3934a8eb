"""PatchScope as TransformerLens hook functions: write a (mapped) vector into the residual stream.

The hooks are plain ``(tensor, hook) -> tensor`` functions for ``blocks.{l}.hook_resid_post``, so they go
into ``model.hooks(fwd_hooks=...)``, ``run_with_hooks`` or around ``generate`` next to any other hook.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens_pivotal.model import resid_post_hook

Mapping = Callable[[Float[Tensor, "... d_model"]], Float[Tensor, "... d_model"]]
HookFn = Callable[[Tensor, object], Tensor]
PositionSpec = Union[int, Sequence[int], Int[Tensor, " rows"]]


def patch_hook(
    vectors: Float[Tensor, "d_model"] | Float[Tensor, "rows d_model"],
    position: PositionSpec,
    *,
    mapping: Mapping | None = None,
    attention_mask: Int[Tensor, "batch prompt_len"] | None = None,
    rows: Sequence[int] | None = None,
    prefill_only: bool = True,
) -> HookFn:
    """A hook that writes ``mapping(vectors)`` into the residual stream at ``position``.

    Args:
        vectors: one vector for every patched row, or one per patched row (``[rows, d_model]``).
        position: the token to overwrite, an int for every row or one int per patched row. It indexes
            each row's real tokens (those where ``attention_mask`` is 1), so ``-1`` is each row's last
            real token under left or right padding.
        mapping: ``f`` of the patchscope, applied once to ``vectors`` (e.g. an
            :class:`~lens_pivotal.lenses.AffineMap`); ``None`` is the identity.
        attention_mask: the prompt's ``[batch, prompt_len]`` 0/1 mask. Its width is the prompt length:
            a call whose tensor is shorter than the prompt is a KV-cached decode step. Without it every
            row is taken as unpadded and a one-token tensor as a decode step, so pass it to patch a
            one-token prompt or to generate with ``use_past_kv_cache=False``.
        rows: the batch rows to write (default: every row).
        prefill_only: leave decode steps untouched (the PatchScope definition); ``False`` also writes
            ``position`` of each decode step's tensor.

    Raises:
        ValueError: ``vectors`` is not 1-D/2-D, or its rows, ``position`` and ``rows`` disagree in
            number; at call time, a ``d_model`` or batch size that does not match the activation.
        IndexError: a position outside a row's tokens.
    """
    values = _as_rows(vectors if mapping is None else mapping(vectors), "vectors")
    n_rows = len(rows) if rows is not None else None
    if n_rows is not None and values.shape[0] not in (1, n_rows):
        raise ValueError(f"vectors has {values.shape[0]} rows but rows selects {n_rows} batch rows")
    positions = _as_positions(position)
    if positions.ndim == 1 and values.shape[0] != 1 and len(positions) != values.shape[0]:
        raise ValueError(f"position has {len(positions)} entries but vectors has {values.shape[0]} rows")
    prompt_length = attention_mask.shape[1] if attention_mask is not None else None
    row_index = torch.as_tensor(rows, dtype=torch.long) if rows is not None else None
    # With a mask every column is known now: nothing is resolved (or synchronised) per forward pass.
    columns = _columns(positions, row_index, attention_mask) if attention_mask is not None else None
    on_device: dict[torch.device, tuple[Tensor, Tensor | None, Tensor | None]] = {}

    def hook(resid: Float[Tensor, "batch pos d_model"], hook: object) -> Float[Tensor, "batch pos d_model"]:
        if prefill_only and _is_decode_step(resid.shape[1], prompt_length):
            return resid
        if resid.shape[-1] != values.shape[-1]:
            raise ValueError(f"vectors have d_model {values.shape[-1]} but {_name(hook)} has {resid.shape[-1]}")
        if resid.device not in on_device:
            on_device[resid.device] = tuple(t.to(resid.device) if t is not None else None for t in (values, row_index, columns))
        patch, patch_rows, patch_columns = on_device[resid.device]
        if patch_rows is None:
            patch_rows = torch.arange(resid.shape[0], device=resid.device)
        if patch.shape[0] not in (1, len(patch_rows)):
            raise ValueError(f"vectors has {patch.shape[0]} rows but {_name(hook)} patches {len(patch_rows)} batch rows")
        if patch_columns is None:
            patch_columns = _columns(positions, row_index, torch.ones(resid.shape[0], resid.shape[1])).to(resid.device)
        patch = patch.to(resid.dtype).expand(len(patch_rows), -1)
        return resid.index_put((patch_rows, patch_columns), patch)

    return hook


def layered_patch_hooks(
    vectors: Float[Tensor, "rows d_model"],
    position: PositionSpec,
    layers: Sequence[int],
    *,
    mapping: Mapping | None = None,
    attention_mask: Int[Tensor, "rows prompt_len"] | None = None,
    prefill_only: bool = True,
) -> list[tuple[str, HookFn]]:
    """``fwd_hooks`` that patch batch row ``r`` with ``vectors[r]`` at ``blocks.{layers[r]}.hook_resid_post``.

    One hook per distinct layer, each writing only its own rows: many (source, layer) pairs share one
    forward pass. Arguments are as for :func:`patch_hook`, with one vector, position and layer per row.
    """
    values = _as_rows(vectors, "vectors")
    if len(layers) != values.shape[0]:
        raise ValueError(f"layers has {len(layers)} entries but vectors has {values.shape[0]} rows")
    positions = _as_positions(position)
    by_layer: dict[int, list[int]] = defaultdict(list)
    for row, layer in enumerate(layers):
        by_layer[int(layer)].append(row)
    hooks = []
    for layer, rows in sorted(by_layer.items()):
        row_positions = positions if positions.ndim == 0 else positions[rows]
        hook = patch_hook(
            values[rows], row_positions, mapping=mapping, attention_mask=attention_mask, rows=rows,
            prefill_only=prefill_only,
        )
        hooks.append((resid_post_hook(layer), hook))
    return hooks


def _as_rows(vectors: Tensor, what: str) -> Float[Tensor, "rows d_model"]:
    if not isinstance(vectors, Tensor) or not vectors.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {type(vectors).__name__}")
    if vectors.ndim not in (1, 2):
        raise ValueError(f"{what} must be [d_model] or [rows, d_model], got shape {tuple(vectors.shape)}")
    return vectors.detach().reshape(-1, vectors.shape[-1])


def _as_positions(position: PositionSpec) -> Int[Tensor, "..."]:
    if isinstance(position, bool) or not isinstance(position, (int, Sequence, Tensor)):
        raise TypeError(f"position must be an int or one int per row, got {position!r}")
    positions = torch.as_tensor(position)
    if positions.is_floating_point() or positions.ndim > 1:
        raise TypeError(f"position must be an int or a 1-D list of ints, got {position!r}")
    return positions.long().cpu()


def _is_decode_step(seq_len: int, prompt_length: int | None) -> bool:
    return seq_len < prompt_length if prompt_length is not None else seq_len == 1


def _columns(positions: Tensor, row_index: Tensor | None, attention_mask: Tensor) -> Int[Tensor, " rows"]:
    """Absolute column of each patched row's ``position``, counting only that row's real tokens."""
    mask = attention_mask.detach().cpu().long()
    if row_index is not None:
        mask = mask[row_index]
    counts = mask.sum(dim=1)
    if positions.ndim == 1 and len(positions) != len(mask):
        raise ValueError(f"position has {len(positions)} entries but {len(mask)} batch rows are patched")
    wanted = positions.expand(len(mask)) if positions.ndim == 0 else positions
    resolved = torch.where(wanted < 0, wanted + counts, wanted)
    bad = ((resolved < 0) | (resolved >= counts)).nonzero().flatten()
    if len(bad):
        row = int(bad[0])
        batch_row = int(row_index[row]) if row_index is not None else row
        raise IndexError(f"position {int(wanted[row])} is out of range for batch row {batch_row}, which has {int(counts[row])} tokens")
    # The k-th real token sits in the first column whose running count of real tokens exceeds k.
    return (mask.cumsum(dim=1) <= resolved[:, None]).sum(dim=1)


def _name(hook: object) -> str:
    return getattr(hook, "name", None) or "the hooked activation"
