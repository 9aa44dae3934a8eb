"""Which input tokens drive a target: captum's attribution methods on the token embeddings, through TransformerLens hooks.

Every method attributes to the output of the embedding, ``blocks.0.hook_resid_pre``: the forward function captum
differentiates runs the model with that hook replaced by the embeddings it is given, so the user's own hooks (an
ablated head, a steering vector) stay active and shape the result. Only the tokens up to the target position run: a
causal model cannot use the later ones, which get exactly 0.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal, Sequence, get_args

import torch
from captum.attr import FeatureAblation, InputXGradient, IntegratedGradients
from jaxtyping import Float
from torch import Tensor

from lens_pivotal.attributions.targets import Target, TargetSpec, resolve_target
from lens_pivotal.indices import resolve_index
from lens_pivotal.model import EMBEDDING_HOOK, Layer, StopForward
from lens_pivotal.tokens import TextOrIds, Tokenization, token_ids
from lens_pivotal.viz.html import HTMLView

Method = Literal["integrated_gradients", "input_x_gradient", "occlusion"]
LARGE_DELTA = 0.1  # |convergence_delta| above this fraction of |target_value - baseline_value| gets a warning


@dataclass
class TokenAttribution:
    """How much each token of a text drives ``target_label`` at ``position`` (``scores[t]``; 0 after ``position``).

    ``target_value`` is the target on the real input. With integrated gradients, ``baseline_value`` is the target at
    the baseline input and ``convergence_delta = scores.sum() - (target_value - baseline_value)``: how far the
    attribution is from complete (0 for an exact one).
    """

    tokens: list[str]
    token_ids: list[int]
    position: int
    method: str
    target_label: str
    scores: Float[Tensor, " n_tokens"]
    target_value: float
    baseline: str
    baseline_value: float | None = None
    convergence_delta: float | None = None
    steps: int | None = None

    @property
    def relative_delta(self) -> float | None:
        """``|convergence_delta| / |target_value - baseline_value|``: the fraction of the change left unexplained."""
        if self.convergence_delta is None or self.baseline_value is None:
            return None
        return abs(self.convergence_delta) / max(abs(self.target_value - self.baseline_value), 1e-12)

    def top(self, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` tokens with the largest ``|score|``: ``(position, token, score)``, largest first."""
        order = self.scores.abs().argsort(descending=True)[: min(k, len(self.tokens))]
        return [(int(index), self.tokens[int(index)], float(self.scores[index])) for index in order]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields (scores as a list)."""
        fields = dict(vars(self))
        fields["scores"] = self.scores.tolist()
        return fields

    def view(self) -> HTMLView:
        """Tokens coloured on a diverging scale around 0, the target position marked (circuitsvis, offline)."""
        from lens_pivotal.attributions.views import token_attribution_view

        return token_attribution_view(self)


def attribute_tokens(
    model: Any,
    text: TextOrIds,
    *,
    target: TargetSpec,
    position: int = -1,
    method: Method = "integrated_gradients",
    layer: Layer | None = None,
    baseline: Literal["zero"] | int = "zero",
    steps: int = 32,
    batch_size: int = 8,
    tokenization: Tokenization = "tokenizer",
    add_special_tokens: bool | None = None,
) -> TokenAttribution:
    """Attribute ``target`` at ``position`` to the tokens of ``text`` with captum.

    Args:
        model: a TransformerLens model (:func:`lens_pivotal.load_model`); hooks already on it stay active.
        text: a string (tokenized by the package's rule, :mod:`lens_pivotal.tokens`) or token ids, used as given.
        target: a token (a one-token string or an id; its next-token log-probability), ``None`` (the model's top-1
            token at ``position``), a :class:`~lens_pivotal.LayerProbes` (its logit at probed layer ``layer``) or
            ``(hook_name, direction)`` (that activation dotted with ``direction``); see
            :mod:`lens_pivotal.attributions.targets`.
        position: the token position the target is read at; negatives count from the end.
        method: ``"integrated_gradients"`` (straight line from the baseline embeddings, ``steps`` Gauss-Legendre
            points), ``"input_x_gradient"`` (gradient dotted with the embedding) or ``"occlusion"`` (target minus
            the target with that token's embedding replaced by the baseline's).
        layer: a block (TransformerLens' ``blocks.{layer}``) or a hook name. With probes, the probe of that layer
            (default: their best layer); with a token, read the log-probability through the logit lens there
            instead of the final logits.
        baseline: ``"zero"`` (all-zero embeddings) or a token id whose embedding replaces every token.
        steps: integrated-gradients points; raise it when ``convergence_delta`` is large.
        batch_size: inputs per forward/backward pass (path points, or occluded copies).
        tokenization, add_special_tokens: how a string is tokenized (:func:`lens_pivotal.tokens.token_ids`; the
            default is the package's one rule, as in every other call).

    Raises:
        ValueError: an unknown method or baseline, ``steps`` or ``batch_size`` below 1, a bad target.
        IndexError: ``position`` outside the text, a layer or token id out of range.
    """
    if method not in get_args(Method):
        raise ValueError(f"method must be one of {get_args(Method)}, got {method!r}")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int of at least 1, got {value!r}")
    ids = token_ids(model, text, tokenization=tokenization, add_special_tokens=add_special_tokens)
    position = resolve_index(position, len(ids), f"position {position!r}", f": the text has {len(ids)} tokens")
    forward = EmbeddingForward(model, ids[: position + 1])
    target_obj = resolve_target(model, target, layer, forward.top1)
    baseline_embeddings = forward.baseline_embeddings(baseline)
    with torch.enable_grad():
        result = _attribute(forward, target_obj, method, baseline_embeddings, steps, batch_size)
    scores = torch.zeros(len(ids))
    scores[: position + 1] = result.scores.detach().float().cpu()
    attribution = TokenAttribution(
        tokens=[model.tokenizer.decode([token]) for token in ids.tolist()], token_ids=ids.tolist(), position=position,
        method=method, target_label=target_obj.label, scores=scores, target_value=result.target_value,
        baseline=str(baseline), steps=steps if method == "integrated_gradients" else None,
    )  # fmt: skip
    if method == "integrated_gradients":
        _add_completeness(attribution, result.baseline_value)
    return attribution


@dataclass
class _Result:
    scores: Tensor
    target_value: float
    baseline_value: float


def _attribute(
    forward: EmbeddingForward, target: Target, method: str, baseline: Tensor, steps: int, batch_size: int
) -> _Result:
    embeddings = forward.embeddings
    function = forward.of(target)
    with torch.no_grad():
        target_value = float(function(embeddings)[0])
        baseline_value = float(function(baseline)[0]) if method == "integrated_gradients" else float("nan")
    if method == "integrated_gradients":
        attributions = IntegratedGradients(function).attribute(
            embeddings, baselines=baseline, n_steps=steps, internal_batch_size=batch_size
        )
        scores = attributions[0].double().sum(dim=-1)
    elif method == "input_x_gradient":
        inputs = embeddings.clone().requires_grad_(True)
        scores = InputXGradient(function).attribute(inputs)[0].double().sum(dim=-1)
    else:
        mask = torch.arange(embeddings.shape[1], device=embeddings.device).view(1, -1, 1)
        attributions = FeatureAblation(function).attribute(
            embeddings, baselines=baseline, feature_mask=mask, perturbations_per_eval=batch_size
        )
        scores = attributions[0, :, 0].double()  # one value per token, repeated across its d_model features
    return _Result(scores, target_value, baseline_value)


def _add_completeness(attribution: TokenAttribution, baseline_value: float) -> None:
    attribution.baseline_value = baseline_value
    attribution.convergence_delta = float(attribution.scores.double().sum()) - (attribution.target_value - baseline_value)
    if attribution.relative_delta > LARGE_DELTA:
        warnings.warn(
            f"integrated gradients explain only part of the change in {attribution.target_label}: convergence_delta "
            f"{attribution.convergence_delta:+.4g} is {attribution.relative_delta:.0%} of target - baseline "
            f"({attribution.target_value - baseline_value:+.4g}) at steps={attribution.steps}; raise steps or try "
            "another baseline",
            stacklevel=3,
        )


class EmbeddingForward:
    """Runs ``model`` on fixed token ids with the embedding output (``blocks.0.hook_resid_pre``) replaced by given
    embeddings, and reads a :class:`Target` at the last position; the forward function captum differentiates."""

    def __init__(self, model: Any, ids: Tensor) -> None:
        self.model = model
        self.ids = ids.to(next(model.parameters()).device)
        self.embeddings = self._embeddings_of(self.ids)

    def of(self, target: Target):
        """``f(embeddings [batch, seq, d_model]) -> [batch]``: the target at the last position."""

        def function(embeddings: Tensor) -> Tensor:
            return target(self.run(embeddings, target.hook_name))

        return function

    def run(self, embeddings: Tensor, hook_name: str | None) -> Float[Tensor, "batch width"]:
        """The activation at ``hook_name`` (the logits when ``None``) at the last position, for these embeddings."""

        def replace(resid: Tensor, hook: Any) -> Tensor:
            return embeddings.to(resid.dtype)

        ids = self.ids.expand(len(embeddings), -1)
        return self._read(ids, [(EMBEDDING_HOOK, replace)], hook_name)[:, -1]

    def _read(self, ids: Tensor, hooks: list, hook_name: str | None) -> Tensor:
        """The activation at ``hook_name`` (stopping the pass there), or the logits when ``None``, with ``hooks`` on."""
        captured: dict[str, Tensor] = {}

        def read(activation: Tensor, hook: Any) -> None:
            captured["activation"] = activation
            raise StopForward

        with self.model.hooks(fwd_hooks=hooks + ([(hook_name, read)] if hook_name is not None else [])):
            try:
                return self.model(ids)
            except StopForward:
                return captured["activation"]

    def top1(self) -> int:
        """The model's own most likely next token at the last position."""
        with torch.no_grad():
            return int(self.run(self.embeddings, None)[0].argmax())

    def baseline_embeddings(self, baseline: Literal["zero"] | int) -> Float[Tensor, "1 seq d_model"]:
        """All-zero embeddings, or those of ``baseline`` (a token id) at every position."""
        if baseline == "zero":
            return torch.zeros_like(self.embeddings)
        if isinstance(baseline, bool) or not isinstance(baseline, int):
            raise ValueError(f"baseline must be 'zero' or a token id, got {baseline!r}")
        if not 0 <= baseline < self.model.cfg.d_vocab:
            raise IndexError(f"baseline token id {baseline} is outside the vocabulary (0..{self.model.cfg.d_vocab - 1})")
        return self._embeddings_of(torch.full_like(self.ids, baseline))

    def _embeddings_of(self, ids: Tensor) -> Float[Tensor, "1 seq d_model"]:
        with torch.no_grad():
            return self._read(ids.unsqueeze(0), [], EMBEDDING_HOOK).detach().clone()


def compare_methods(
    model: Any, text: TextOrIds, *, methods: Sequence[Method] = get_args(Method), **kwargs: Any
) -> list[TokenAttribution]:
    """:func:`attribute_tokens` once per method, same text, target and position (for a side-by-side view)."""
    return [attribute_tokens(model, text, method=method, **kwargs) for method in methods]
