"""A cheap fingerprint of a model's weights: whether two models (or one model before and after an edit) hold the
same parameters, without reading every value.

Every parameter and buffer contributes its name, shape and dtype, and the exact bytes of a strided sample of its
values: a tensor of up to ``samples`` elements is hashed whole; a larger one at ``samples`` evenly spaced elements of
its row-major flattening, those at flat indices ``i * (numel - 1) // (samples - 1)`` for ``i`` in
``0..samples-1`` (the first and last element always among them). Any change to a sampled element, so any rescaling,
any fine-tune that moves most values and any change of shape or dtype, changes the fingerprint; a change made only at
unsampled elements (one row of a large embedding matrix, say) goes unseen. Tensors on the ``meta`` device
(offloaded weights) have no values to read and contribute their name, shape and dtype only.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import Tensor, nn

SAMPLES_PER_TENSOR = 4096


def weights_fingerprint(model: nn.Module, samples: int = SAMPLES_PER_TENSOR) -> str:
    """sha256 (hex) over every parameter and buffer of ``model``: name, shape, dtype and up to ``samples`` values
    each (see the module docstring for which). Its cost grows with the number of tensors, not their size (about
    30 ms for the 276 of SmolLM2-135M on a CPU)."""
    if samples < 2:
        raise ValueError(f"samples must be at least 2, got {samples}")
    digest = hashlib.sha256()
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        header = {"name": name, "shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
        digest.update(json.dumps(header).encode())
        if tensor.device.type != "meta":
            digest.update(_sampled_bytes(tensor.detach(), samples))
    return digest.hexdigest()


def sampled_indices(numel: int, samples: int = SAMPLES_PER_TENSOR) -> Tensor:
    """The flat indices of a ``numel``-element tensor whose values :func:`weights_fingerprint` reads."""
    if numel <= samples:
        return torch.arange(numel)
    return torch.arange(samples, dtype=torch.long) * (numel - 1) // (samples - 1)


def _sampled_bytes(tensor: Tensor, samples: int) -> bytes:
    flat = tensor.reshape(-1)
    # index_select, not flat[indices]: advanced indexing spins up every CPU thread for a 4096-element gather
    picked = flat.index_select(0, sampled_indices(flat.numel(), samples).to(flat.device))
    # a uint8 view gives the exact bytes of any dtype, bfloat16 included (numpy has none)
    return picked.contiguous().cpu().view(torch.uint8).numpy().tobytes()
