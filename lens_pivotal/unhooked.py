"""The Hugging Face model under a TransformerLens bridge, without the bridge: same weights, no hook points.

``model.original_model`` is the HF model the bridge was booted from, but the bridge has replaced its
submodules with hooked wrappers (``_original_component`` inside each), so every forward through it pays
for the hook points, and attention runs in eager mode so that ``hook_pattern`` can fire. Sampling that
no hook needs to see (Pivotal Token Search rollouts, DPO counterpart estimates) can instead run on
:func:`unhooked_hf_model`: a plain instance of the same HF class whose parameters and buffers *are* the
bridge's tensors (nothing is copied, and weight edits show in both), with fused SDPA attention.

Hooks added with ``model.hooks(...)`` do not fire in it, by design; steering evaluation therefore keeps
sampling through ``model.original_model``.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn
from transformer_lens.model_bridge import TransformerBridge

from lens_pivotal.kv_cache import logit_tolerance, stack_versions

_CHECK_TOKENS = 8


class UnhookedModelError(RuntimeError):
    """The unhooked HF model disagrees with the bridge it was taken from."""


def _unwrapped(module: nn.Module) -> nn.Module:
    while "_original_component" in module._modules:
        module = module._modules["_original_component"]
    return module


def _hf_submodule(root: nn.Module, path: str) -> nn.Module:
    """The HF module at ``path`` (HF's own dotted name) inside the bridged ``root``, wrappers skipped."""
    module = _unwrapped(root)
    for part in filter(None, path.split(".")):
        module = _unwrapped(getattr(module, part))
    return module


def _plain_config(hf_model: nn.Module) -> object:
    config = copy.deepcopy(hf_model.config)
    if getattr(hf_model, "_supports_sdpa", False):
        config._attn_implementation = "sdpa"
    return config


def is_split(hf_model: nn.Module) -> bool:
    """Whether an accelerate ``device_map`` spread ``hf_model`` over several devices (then only the bridge's own
    modules, with accelerate's hooks, know where each tensor goes)."""
    return len({str(place) for place in (getattr(hf_model, "hf_device_map", None) or {}).values()}) > 1


def unhooked_hf_model(model: TransformerBridge, check: bool = True) -> nn.Module:
    """A plain HF model that shares every weight of ``model`` and computes what ``model`` computes, hook-free.

    Built on the meta device and then given the bridge's own parameter and buffer tensors, so it costs no
    memory. With ``check`` (milliseconds), one forward pass on both is compared first.

    Raises:
        ValueError: the model is split over several devices (see :func:`is_split`).
        UnhookedModelError: its next-token log-probabilities differ from the bridge's.
    """
    hf_model = model.original_model
    if is_split(hf_model):
        raise ValueError("the model is split over several devices by a device_map: use model.original_model")
    with torch.device("meta"):
        plain = type(hf_model)(_plain_config(hf_model))
    tensors = itertools.chain(
        plain.named_parameters(remove_duplicate=False), plain.named_buffers(remove_duplicate=False)
    )
    for name, _ in tensors:
        owner_path, _, attribute = name.rpartition(".")
        owner = plain.get_submodule(owner_path)
        source = getattr(_hf_submodule(hf_model, owner_path), attribute)
        (owner._parameters if attribute in owner._parameters else owner._buffers)[attribute] = source
    plain.eval()
    if check:
        _check_same_outputs(model, plain)
    return plain


@torch.inference_mode()
def _check_same_outputs(model: TransformerBridge, plain: nn.Module) -> None:
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.cfg.d_vocab, (1, _CHECK_TOKENS), generator=generator).to(device)
    # compatibility mode centres the unembedding, which shifts logits by a constant per position
    theirs = model(ids).float().log_softmax(-1)
    ours = plain(ids).logits.float().log_softmax(-1)
    error = float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-6))
    if error > logit_tolerance(model):
        raise UnhookedModelError(
            f"the HF model unwrapped from the bridge disagrees with the bridge ({stack_versions()}): next-token "
            f"log-probabilities differ by {error:.3g} of the largest (tolerance {logit_tolerance(model):.0e}). "
            "Sample through model.original_model instead (hf_backend(..., hooks=True)), and report it."
        )
