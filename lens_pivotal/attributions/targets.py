"""What an attribution explains: one scalar read from a forward pass at one token position.

- a token (a string that is exactly one token, or an id): the next-token log-probability of that token, from the
  model's logits, or through the logit lens at block ``layer``;
- a :class:`~lens_pivotal.LayerProbes` with ``layer``: that probe's logit, read from its residual stream exactly as
  ``predict_proba`` reads it;
- ``(hook_name, direction)``: the activation at ``hook_name`` dotted with ``direction`` (probe weights, a steering
  vector, a feature direction; normalise it yourself for a unit projection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

import torch
from jaxtyping import Float
from torch import Tensor

from lens_pivotal.model import Layer, describe_layer, layer_hook
from lens_pivotal.probes.layer_probes import LayerProbes
from lens_pivotal.tokens import own_tokenizer

TargetSpec = Union[str, int, LayerProbes, tuple[str, Tensor], None]


@dataclass(frozen=True)
class Target:
    """A scalar per batch row: ``read`` applied to the activation at ``hook_name`` at the target position (``hook_name``
    ``None``: to the logits there).

    ``direction`` / ``offset`` make the target linear in the residual stream at ``hook_name`` (``target = resid @
    direction + offset``), where it is; a token target is linear in the normalised stream read through the
    unembedding, with ``token_id`` naming its column.
    """

    label: str
    hook_name: str | None
    read: Callable[[Tensor], Tensor]
    token_id: int | None = None
    direction: Float[Tensor, " d_model"] | None = None
    offset: float = 0.0

    def __call__(self, activation: Float[Tensor, "batch width"]) -> Float[Tensor, " batch"]:
        return self.read(activation)


def token_label(model: Any, token_id: int) -> str:
    """``log P('x')``-style label of a token target."""
    return f"log P({model.tokenizer.decode([token_id])!r})"


def resolve_target(model: Any, target: TargetSpec, layer: Layer | None, top1: Callable[[], int]) -> Target:
    """The :class:`Target` a user's ``target`` (and ``layer``) name; ``top1()`` gives the model's own top-1 token
    (called only when ``target`` is ``None``).

    Raises:
        ValueError: a string that is not exactly one token, a direction of the wrong shape, a hook the model lacks.
        IndexError: a token id outside the vocabulary, a layer the probes (or the model) do not hold.
        TypeError: anything else.
    """
    if isinstance(target, LayerProbes):
        return probe_target(model, target, layer)
    if isinstance(target, tuple):
        if layer is not None:
            raise ValueError("layer= is not used with a (hook_name, direction) target: the hook name says where to read")
        return direction_target(model, *target)
    if target is None:
        return token_target(model, top1(), layer)
    if isinstance(target, str):
        return token_target(model, single_token_id(model, target), layer)
    if isinstance(target, int) and not isinstance(target, bool):
        return token_target(model, target, layer)
    raise TypeError(
        "target must be a token (a string of one token, or an id), None (the top-1 token), a LayerProbes (with layer=) "
        f"or a (hook_name, direction) pair, got {type(target).__name__}"
    )


def single_token_id(model: Any, token: str) -> int:
    """The id of ``token``, which must be exactly one token of the model's tokenizer."""
    ids = own_tokenizer(model)(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [model.tokenizer.decode([token_id]) for token_id in ids]
        raise ValueError(f"target {token!r} is {len(ids)} tokens ({pieces}), not one: pass one token or its id")
    return ids[0]


def token_target(model: Any, token_id: int, layer: Layer | None) -> Target:
    """The next-token log-probability of ``token_id``: from the logits, or through the logit lens at ``layer`` (a
    block or a hook name)."""
    vocabulary = model.cfg.d_vocab
    if not 0 <= token_id < vocabulary:
        raise IndexError(f"target token id {token_id} is outside the vocabulary (0..{vocabulary - 1})")
    label = token_label(model, token_id)

    def from_logits(logits: Tensor) -> Tensor:
        return logits.float().log_softmax(dim=-1)[:, token_id]

    if layer is None:
        return Target(label, None, from_logits, token_id=token_id)
    hook_name = layer_hook(layer, model.cfg.n_layers)
    if hook_name not in model.hook_dict:
        raise ValueError(f"the model has no hook {hook_name!r} (see model.hook_dict for the names)")
    return Target(
        f"{label}, logit lens at {describe_layer(hook_name)}", hook_name,
        lambda resid: from_logits(model.unembed(model.ln_final(resid))), token_id=token_id,
    )  # fmt: skip


def probe_target(model: Any, probes: LayerProbes, layer: Layer | None) -> Target:
    """The logit of the probe of ``layer`` (a block or a hook name; ``None``: the probes' best layer)."""
    probes.check_model(model)
    layer = probes.best_layer if layer is None else layer
    hook_name = probes.config.hook_names[probes.slot(layer)]
    direction, offset = probes.residual_direction(layer)
    return Target(
        f"probe logit, {describe_layer(hook_name)}", hook_name,
        lambda resid: probes.logits_at([hook_name], resid.unsqueeze(0))[0], direction=direction, offset=offset,
    )  # fmt: skip


def direction_target(model: Any, hook_name: str, direction: Tensor) -> Target:
    """``activation @ direction`` at ``hook_name``."""
    if hook_name not in model.hook_dict:
        raise ValueError(f"the model has no hook {hook_name!r} (see model.hook_dict for the names)")
    if not isinstance(direction, Tensor) or direction.ndim != 1 or not direction.is_floating_point():
        raise ValueError(f"direction must be a 1-D float tensor, got {getattr(direction, 'shape', type(direction).__name__)}")
    width = direction.shape[0]

    def project(activation: Tensor) -> Tensor:
        if activation.ndim != 2 or activation.shape[-1] != width:
            raise ValueError(
                f"direction has width {width} but {hook_name} gives activations of shape "
                f"{tuple(activation.shape[1:])} per position"
            )
        return activation.float() @ direction.to(activation.device, torch.float32)

    residual = hook_name.endswith(("hook_resid_pre", "hook_resid_post", "hook_resid_mid"))
    if residual and width != model.cfg.d_model:
        raise ValueError(f"direction has width {width}; {hook_name} is the residual stream, of width {model.cfg.d_model}")
    return Target(f"{hook_name} · direction", hook_name, project, direction=direction if residual else None)
