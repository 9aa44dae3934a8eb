"""The Hugging Face model under a TransformerLens bridge, without the bridge: same weights, no hook points.

``model.original_model`` is the HF model the bridge was booted from, but the bridge has replaced its
submodules with hooked wrappers (``_original_component`` inside each), so every forward through it pays
for the hook points, and attention runs in eager mode so that ``hook_pattern`` can fire. Sampling that
no hook needs to see (Pivotal Token Search rollouts, DPO counterpart estimates) can instead run on
:func:`unhooked_hf_model`: a plain instance of the same HF class whose parameters and buffers *are* the
bridge's tensors (nothing is copied, and weight edits show in both), with fused SDPA attention.

Two exceptions, both from compatibility mode on models with a fused q/k/v projection or a final LayerNorm (GPT-2,
GPT-NeoX). TransformerLens splits a fused projection (``c_attn``, ``query_key_value``) into q, k and v at boot and
folds and centres only those copies, leaving the HF tensor stale: the plain model gets a fused projection rebuilt
from them (a copy, taken when it is built; without compatibility mode nothing is stale and nothing is copied). And it
folds the final LayerNorm's bias into an unembedding bias the HF class has no slot for: the plain model's head gets it.

Hooks added with ``model.hooks(...)`` do not fire in it, by design; steering evaluation therefore keeps
sampling through ``model.original_model``, and PTS rollouts switch to it while any hook is attached
(:class:`~lens_pivotal.pts.rollouts.BridgeRollouts`). It carries the checkpoint's ``generation_config`` (extra EOS ids).
"""

from __future__ import annotations

import copy
import itertools
from types import SimpleNamespace

import torch
from torch import nn
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.generalized_components import JointQKVAttentionBridge

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


def _rebuilt_fused_qkv(attention: JointQKVAttentionBridge) -> dict[str, nn.Parameter]:
    """The fused q/k/v projection's tensors that differ from the bridge's split q, k and v, rebuilt from those.

    The bridge's split is a rearrangement of the fused entries (architecture-specific: GPT-2 concatenates, GPT-NeoX
    interleaves per head); running it on the entries' indices tells where each split entry belongs.
    """
    fused = _unwrapped(attention.qkv)
    indices = {
        name: torch.arange(tensor.numel(), dtype=torch.float64).view(tensor.shape)
        for name, tensor in fused.named_parameters(recurse=False)
    }
    stand_in = SimpleNamespace(**{attention.submodules["qkv"].name: SimpleNamespace(**{"bias": None, **indices})})
    split = attention.split_qkv_matrix(stand_in)
    rebuilt = {}
    for name, index in indices.items():
        original = getattr(fused, name)
        flat = torch.empty(index.numel(), dtype=original.dtype, device=original.device)
        covered = torch.zeros(index.numel(), dtype=torch.bool)
        for part, projection in zip(split, (attention.q, attention.k, attention.v)):
            where = getattr(part, name).detach().flatten().long()
            flat[where.to(original.device)] = getattr(_unwrapped(projection), name).detach().flatten()
            covered[where] = True
        if not covered.all():
            raise UnhookedModelError(f"the split of {type(attention).__name__} is not a rearrangement of its fused {name}")
        if not torch.equal(flat.view(index.shape), original):  # stale: compatibility mode changed the split copies
            rebuilt[name] = nn.Parameter(flat.view(index.shape), requires_grad=False)
    return rebuilt


def _rebuilt_tensors(model: TransformerBridge) -> dict[int, dict[str, nn.Parameter]]:
    """By ``id`` of the stale fused HF module: its tensors rebuilt from the bridge's split q, k and v."""
    return {
        id(_unwrapped(module.qkv)): _rebuilt_fused_qkv(module)
        for module in model.modules()
        if isinstance(module, JointQKVAttentionBridge)
    }


def _give_unembedding_bias(plain: nn.Module, hf_model: nn.Module) -> None:
    """The bridge's unembedding bias (a buffer TransformerLens adds to a bias-free HF head, into which compatibility
    mode folds a final LayerNorm's bias), on the plain model's head, which has none."""
    head, source = plain.get_output_embeddings(), _unwrapped(hf_model.get_output_embeddings())
    if head.bias is None and getattr(source, "bias", None) is not None:
        del head._parameters["bias"]
        head.register_buffer("bias", source.bias)


def is_split(hf_model: nn.Module) -> bool:
    """Whether an accelerate ``device_map`` spread ``hf_model`` over several devices (then only the bridge's own
    modules, with accelerate's hooks, know where each tensor goes)."""
    return len({str(place) for place in (getattr(hf_model, "hf_device_map", None) or {}).values()}) > 1


def unhooked_hf_model(model: TransformerBridge, check: bool = True) -> nn.Module:
    """A plain HF model that shares every weight of ``model`` and computes what ``model`` computes, hook-free.

    Built on the meta device and then given the bridge's own parameter and buffer tensors, so it costs no
    memory (but for a fused q/k/v projection, rebuilt: see the module docstring). With ``check`` (milliseconds),
    one forward pass on both is compared first.

    Raises:
        ValueError: the model is split over several devices (see :func:`is_split`).
        UnhookedModelError: its next-token log-probabilities differ from the bridge's.
    """
    hf_model = model.original_model
    if is_split(hf_model):
        raise ValueError("the model is split over several devices by a device_map: use model.original_model")
    with torch.device("meta"):
        plain = type(hf_model)(_plain_config(hf_model))
    rebuilt = _rebuilt_tensors(model)
    tensors = itertools.chain(
        plain.named_parameters(remove_duplicate=False), plain.named_buffers(remove_duplicate=False)
    )
    for name, _ in tensors:
        owner_path, _, attribute = name.rpartition(".")
        owner = plain.get_submodule(owner_path)
        source_module = _hf_submodule(hf_model, owner_path)
        source = rebuilt.get(id(source_module), {}).get(attribute, getattr(source_module, attribute))
        (owner._parameters if attribute in owner._parameters else owner._buffers)[attribute] = source
    _give_unembedding_bias(plain, hf_model)
    plain.generation_config = copy.deepcopy(hf_model.generation_config)
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
