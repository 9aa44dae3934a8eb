"""Scoring new text with trained probes: a whole text at once, or live as a TransformerLens hook during ``generate``.

A score at token ``t`` is the probe's probability that token ``t + 1`` is pivotal, read from the residual stream at
``t``. Texts are tokenized as the probes' examples were: without added special tokens (pass token ids to choose).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from lens_pivotal.model import EMBEDDING_HOOK, Layer, block_of
from lens_pivotal.positions import SequencePositions
from lens_pivotal.probes.calibration import Threshold
from lens_pivotal.probes.layer_probes import LayerProbes
from lens_pivotal.probes.scores import GeneratedScores, TokenScores
from lens_pivotal.resid.cache import Layout, cache_resid_post
from lens_pivotal.tokens import token_ids

LayerChoice = Layer | Sequence[Layer] | None  # or "all"


class ProbeRecorder:
    """A TransformerLens hook function that scores every position it sees with the probe of ``layer`` (a block or a
    hook name; default: the best layer).

    Use it like any hook: ``model.hooks(fwd_hooks=[recorder.fwd_hook])``, ``run_with_hooks``, or
    :func:`recording`. It never changes the activation, so it composes with other hooks. Each forward
    pass appends ``[batch, pos]`` probabilities to :attr:`scores`; :meth:`concatenated` places them at their absolute
    positions, whether ``generate`` continues from the KV cache (one-position passes) or recomputes the sequence
    (:class:`~lens_pivotal.positions.SequencePositions`). ``on_score``, if given, is
    called after each pass with the last position's scores ``[batch]``: during ``generate``, the probe's belief that
    the token about to be sampled is pivotal, before it is sampled.
    """

    def __init__(
        self, probes: LayerProbes, layer: Layer | None = None, on_score: Callable[[Tensor], object] | None = None
    ) -> None:
        self.probes = probes
        slot = probes.slot(probes.best_layer if layer is None else layer)
        self.hook_name: str = probes.config.hook_names[slot]
        self.layer: Layer = probes.layers[slot]
        self.layer_label = probes.layer_labels[slot]
        self.on_score = on_score
        self.scores: list[Tensor] = []
        self._by_position: Tensor | None = None
        self._sequence = SequencePositions()

    @property
    def fwd_hook(self) -> tuple[str, ProbeRecorder]:
        """``(hook_name, self)``, ready for ``fwd_hooks=[...]``."""
        return self.hook_name, self

    def __call__(self, resid: Float[Tensor, "batch pos d_model"], hook: Any) -> None:
        with torch.no_grad():
            batch, positions, d_model = resid.shape
            scores = self.probes.proba_at([self.hook_name], resid.reshape(1, batch * positions, d_model))
            self.scores.append(scores.view(batch, positions).cpu())
            start = self._sequence.advance(resid)
            earlier = self._by_position[:, :start] if start else self.scores[-1][:, :0]
            self._by_position = torch.cat([earlier, self.scores[-1]], dim=1)
        if self.on_score is not None:
            self.on_score(self.scores[-1][:, -1])

    def concatenated(self) -> Float[Tensor, "batch total_pos"]:
        """The current sequence's score at every position seen so far (the latest pass' where passes overlap)."""
        if self._by_position is None:
            raise RuntimeError(f"nothing recorded yet: no forward pass went through {self.hook_name}")
        return self._by_position

    def reset(self) -> None:
        """Forget what was recorded."""
        self.scores.clear()
        self._by_position = None
        self._sequence.reset()


@contextlib.contextmanager
def recording(
    probes: LayerProbes, model: Any, layer: Layer | None = None, on_score: Callable[[Tensor], object] | None = None
) -> Iterator[ProbeRecorder]:
    """Attach a :class:`ProbeRecorder` to ``model`` for the ``with`` block; the hook is always removed after."""
    probes.check_model(model)
    recorder = ProbeRecorder(probes, layer, on_score)
    with model.hooks(fwd_hooks=[recorder.fwd_hook]):
        yield recorder


def score_text(probes: LayerProbes, model: Any, text: str | Sequence[int] | Tensor, layer: LayerChoice = None) -> TokenScores:
    """Probe scores for every token of ``text``: at the best layer (default), one layer (a block or a hook name),
    several, or ``"all"``.

    The residual stream is cached with :func:`lens_pivotal.cache_resid_post` (stopping after the deepest block
    needed), then scored with :meth:`LayerProbes.predict_proba`'s arithmetic.
    """
    probes.check_model(model)
    slots = _resolve_choice(probes, layer)
    ids = _answer_ids(model, text)
    names = [probes.config.hook_names[slot] for slot in slots]
    layout = Layout(sorted({block_of(name) for name in names} - {None}) or [0], EMBEDDING_HOOK in names)
    acts = cache_resid_post(
        model, [ids], [list(range(len(ids)))], layers=layout.layers, embeddings=layout.embeddings, progress=False
    )
    selected = acts[[layout.hook_names.index(name) for name in names]]
    scores = probes.proba_at(names, selected)
    tokens = [model.tokenizer.decode([token]) for token in ids]
    return TokenScores(tokens, ids, scores, [probes.layers[slot] for slot in slots], [probes.layer_labels[slot] for slot in slots])


def generate_with_scores(
    model: Any,
    probes: LayerProbes,
    prompt: str | Sequence[int] | Tensor,
    *,
    max_new_tokens: int = 32,
    layer: Layer | None = None,
    threshold: Threshold = 0.5,
    on_score: Callable[[float], object] | None = None,
    **generate_kwargs: Any,
) -> GeneratedScores:
    """Generate from ``prompt`` with TransformerLens ``generate`` while a probe hook scores each step.

    Each generated token gets the score read at the position before it: the probe's belief, just before the token
    was sampled, that it would be pivotal. ``on_score(score)`` is called live with each of those scores, before its
    token is sampled (e.g. to print a warning as a likely pivot comes up). ``generate_kwargs`` go to
    ``model.generate`` (e.g. ``do_sample=False``). ``threshold`` flags likely pivots: a probability, or a
    :class:`~lens_pivotal.probes.calibration.FalsePositiveRate` on the probes' held-out negatives (pivots are rare
    while generating, so 0.5 of a probe trained on balanced classes flags many more tokens than "likely" suggests).
    """
    threshold = probes.resolve_threshold(threshold, layer)
    prompt_ids = _answer_ids(model, prompt)
    tokens_in = torch.tensor([prompt_ids], device=next(model.parameters()).device)
    live = None if on_score is None else (lambda scores: on_score(float(scores[0])))
    with recording(probes, model, layer, live) as recorder:
        out = model.generate(tokens_in, max_new_tokens=max_new_tokens, return_type="tokens", verbose=False, **generate_kwargs)
    new_ids = out[0, len(prompt_ids):].tolist()
    scores = recorder.concatenated()[0, len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(new_ids)]
    tokens = [model.tokenizer.decode([token]) for token in new_ids]
    return GeneratedScores(prompt_ids, tokens, new_ids, scores, threshold, recorder.layer_label)


def _answer_ids(model: Any, text: str | Sequence[int] | Tensor) -> list[int]:
    """Token ids of ``text`` under the package's one rule (:mod:`lens_pivotal.tokens`: a PTS context, which holds the
    model's special tokens, is read as it is); ids pass through."""
    return token_ids(model, text).tolist()


def _resolve_choice(probes: LayerProbes, layer: LayerChoice) -> list[int]:
    """The slots ``layer`` names: the best layer's (``None``), every slot (``"all"``), or those of the blocks or hook
    names given."""
    if layer is None:
        return [probes.slot(probes.best_layer)]
    if layer == "all":
        return list(range(probes.n_layers))
    chosen = [layer] if isinstance(layer, (int, str)) else list(layer)
    return [probes.slot(one) for one in chosen]
