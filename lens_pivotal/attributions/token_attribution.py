"""Which input tokens drive a target: captum's attribution methods on the token embeddings, through TransformerLens hooks.

Every method attributes to the output of the embedding, ``blocks.0.hook_resid_pre``: the forward function captum
differentiates runs the model with that hook replaced by the embeddings it is given, so the user's own hooks (an
ablated head, a steering vector) stay active and shape the result. Only the tokens up to the target position run: a
causal model cannot use the later ones, which get exactly 0.

Integrated gradients' defaults were chosen by measuring completeness (:attr:`TokenAttribution.relative_delta`, the
fraction of ``target - baseline target`` the scores leave unexplained) on the embedded SmolLM2-135M-Instruct; the
table is in :func:`attribute_tokens`' docstring.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal, Sequence, Union, get_args

import torch
from captum.attr import FeatureAblation, InputXGradient, IntegratedGradients
from jaxtyping import Float
from torch import Tensor

from lens_pivotal.attributions.results import LARGE_DELTA, TokenAttribution
from lens_pivotal.attributions.targets import Target, TargetSpec, resolve_target
from lens_pivotal.indices import resolve_index
from lens_pivotal.model import EMBEDDING_HOOK, Layer, StopForward
from lens_pivotal.tokens import TextOrIds, Tokenization, own_tokenizer, token_ids

Method = Literal["integrated_gradients", "input_x_gradient", "occlusion"]
Baseline = Union[Literal["pad", "zero"], int]
DEFAULT_STEPS = 128  # the fewest of 16/32/64/128 with every measured gap under 5% (attribute_tokens)
QUADRATURE = "gausslegendre"  # captum's IntegratedGradients method
HEADER_TOKENS = 4  # a chat template's role header after a special token ("assistant\n") is at most this many tokens


def attribute_tokens(
    model: Any,
    text: TextOrIds,
    *,
    target: TargetSpec,
    position: int = -1,
    method: Method = "integrated_gradients",
    layer: Layer | None = None,
    baseline: Baseline | None = None,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 8,
    tokenization: Tokenization = "tokenizer",
    add_special_tokens: bool | None = None,
) -> TokenAttribution:
    """Attribute ``target`` at ``position`` to the tokens of ``text`` with captum.

    Integrated gradients' defaults, ``baseline="pad"`` and ``steps=DEFAULT_STEPS`` (128) Gauss-Legendre points, were
    measured to leave at most 1% of ``target - baseline target`` unexplained (``relative_delta``) on the embedded
    SmolLM2-135M-Instruct; 128 is the fewest of 16/32/64/128 to stay under 5% on every target tried (CPU, float32;
    ``benchmarks/bench_ig_completeness.py``, full table in ``benchmarks/RESULTS.md``):

        ====================================  =====  =====  =====  =====  ============
        text, target: pad at steps ...        16     32     64     128    zero: 16-128
        ====================================  =====  =====  =====  =====  ============
        plain text, log P("7")                207%   60.9%  26.8%  1.0%   12-488%
        plain text, direction at block 5      5.3%   0.9%   0.0%   0.0%   18-2368%
        chat template, log P("7")             208%   10.5%  7.2%   0.2%   171-433%
        chat template, direction at block 5   10.0%  1.2%   0.0%   0.0%   27-2633%
        make demo's pivot, log P('0')         1.9%   16.6%  2.4%   0.1%   6-456%
        make demo's pivot, probe at block 5   1.1%   0.1%   0.0%   0.0%   729-4479%
        ====================================  =====  =====  =====  =====  ============

    The all-zero baseline (last column) runs the path through RMSNorm's near-singular region and blanks the
    attention sink: no step count fixes it. From the pad baseline the target still varies sharply along the path,
    so fewer points leave large gaps on some targets.

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
        baseline: ``"pad"`` (:func:`pad_baseline_ids`: the first token, special tokens and the chat template's role
            headers kept, every other token replaced by a space, :func:`pad_filler`), ``"zero"`` (all-zero
            embeddings) or a token id whose embedding replaces every token. ``None``: ``"pad"`` for integrated gradients, ``"zero"``
            for occlusion (which then removes any token, the first one included).
        steps: integrated-gradients points; raise it when ``relative_delta`` is above 5% (a warning says so).
        batch_size: inputs per forward/backward pass (path points, or occluded copies).
        tokenization, add_special_tokens: how a string is tokenized (:func:`lens_pivotal.tokens.token_ids`; the
            default is the package's one rule, as in every other call).

    Raises:
        ValueError: an unknown method or baseline, ``steps`` or ``batch_size`` below 1, a bad target, a ``"pad"``
            baseline for a tokenizer with no space, pad or EOS token.
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
    baseline = ("pad" if method == "integrated_gradients" else "zero") if baseline is None else baseline
    baseline_embeddings = forward.baseline_embeddings(baseline)
    with torch.enable_grad():
        result = _attribute(forward, target_obj, method, baseline_embeddings, steps, batch_size)
    scores = torch.zeros(len(ids))
    scores[: position + 1] = result.scores.detach().float().cpu()
    attribution = TokenAttribution(
        tokens=[model.tokenizer.decode([token]) for token in ids.tolist()], token_ids=ids.tolist(), position=position,
        method=method, target_label=target_obj.label, scores=scores, target_value=result.target_value,
        baseline=str(baseline), steps=steps if method == "integrated_gradients" else None,
        kept_positions=pad_kept_positions(model, forward.ids) if baseline == "pad" else [],
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
            embeddings, baselines=baseline, n_steps=steps, method=QUADRATURE, internal_batch_size=batch_size
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
            f"({attribution.target_value - baseline_value:+.4g}) at steps={attribution.steps} from the "
            f"{attribution.baseline!r} baseline; raise steps or try another baseline",
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

    def baseline_embeddings(self, baseline: Baseline) -> Float[Tensor, "1 seq d_model"]:
        """The embeddings of :func:`pad_baseline_ids` (``"pad"``), all zeros (``"zero"``), or those of ``baseline`` (a
        token id) at every position."""
        if baseline == "zero":
            return torch.zeros_like(self.embeddings)
        if baseline == "pad":
            return self._embeddings_of(pad_baseline_ids(self.model, self.ids))
        if isinstance(baseline, bool) or not isinstance(baseline, int):
            raise ValueError(f"baseline must be 'pad', 'zero' or a token id, got {baseline!r}")
        if not 0 <= baseline < self.model.cfg.d_vocab:
            raise IndexError(f"baseline token id {baseline} is outside the vocabulary (0..{self.model.cfg.d_vocab - 1})")
        return self._embeddings_of(torch.full_like(self.ids, baseline))

    def _embeddings_of(self, ids: Tensor) -> Float[Tensor, "1 seq d_model"]:
        with torch.no_grad():
            return self._read(ids.unsqueeze(0), [], EMBEDDING_HOOK).detach().clone()


def pad_baseline_ids(model: Any, ids: Tensor) -> Tensor:
    """The token ids of the ``"pad"`` baseline: ``ids`` with the tokens of :func:`pad_kept_positions` as they are and
    every other one replaced by :func:`pad_filler`."""
    kept = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    kept[pad_kept_positions(model, ids)] = True
    return torch.where(kept, ids, torch.full_like(ids, pad_filler(model)))


def pad_filler(model: Any) -> int:
    """The token the ``"pad"`` baseline puts in place of the text's: the space token ``" "`` when the tokenizer has
    one that is not special, else the pad token, else EOS.

    A space carries next to nothing and marks no structure. The pad token is often EOS or an end-of-turn marker
    (SmolLM2's is ``<|im_end|>``): filled with it, a random block-5 probe on a chat text on the embedded model kept
    6.5% of its change unexplained at 128 steps, against 0.0% with the space (``benchmarks/RESULTS.md``).

    Raises:
        ValueError: the tokenizer has no single space token, pad token or EOS token.
    """
    tokenizer = own_tokenizer(model)
    space = tokenizer(" ", add_special_tokens=False)["input_ids"]
    if len(space) == 1 and space[0] not in tokenizer.all_special_ids:
        return int(space[0])
    filler = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if filler is None:
        raise ValueError("baseline 'pad' needs a space, pad or EOS token and this tokenizer has none: pass 'zero' or a token id")
    return int(filler)


def pad_kept_positions(model: Any, ids: Sequence[int] | Tensor) -> list[int]:
    """The positions the ``"pad"`` baseline keeps: the first token (the attention sink, with or without a BOS), every
    special token, and the role header after a special token up to its newline, when that comes within HEADER_TOKENS
    tokens (a chat template's ``<|im_start|>assistant\\n`` and ``<|im_end|>\\n``, Llama 3's
    ``<|start_header_id|>user<|end_header_id|>\\n\\n``)."""
    tokenizer = own_tokenizer(model)
    ids = [int(token) for token in ids]
    special = set(tokenizer.all_special_ids)
    added = set(tokenizer("")["input_ids"])  # a BOS the tokenizer adds itself: text follows it, not a role header
    specials = [index for index, token in enumerate(ids) if token in special]
    kept = {0, *specials}
    for start in specials:
        if ids[start] not in added:
            kept.update(_role_header(tokenizer, ids, start, special))
    return sorted(kept)


def _role_header(tokenizer: Any, ids: list[int], start: int, special: set[int]) -> range:
    """The positions after the special token at ``start`` up to the next newline (included) or special token, if one
    comes within HEADER_TOKENS; else none."""
    for end in range(start + 1, min(start + 1 + HEADER_TOKENS, len(ids))):
        if ids[end] in special:
            return range(start + 1, end)
        if "\n" in tokenizer.decode([ids[end]]):
            return range(start + 1, end + 1)
    return range(0)


def compare_methods(
    model: Any, text: TextOrIds, *, methods: Sequence[Method] = get_args(Method), **kwargs: Any
) -> list[TokenAttribution]:
    """:func:`attribute_tokens` once per method, same text, target and position (for a side-by-side view)."""
    return [attribute_tokens(model, text, method=method, **kwargs) for method in methods]
