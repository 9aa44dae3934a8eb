"""Probe examples from Pivotal Token Search rows: which token positions are pivotal (label 1) and which are not (0).

A PTS row says: after ``pivot_context`` the model wrote ``pivot_token`` and its chance of success jumped. The
residual stream at the LAST token of ``pivot_context`` is the one whose next-token prediction is the pivot, so that
position is a positive. Rows of one problem that lie on one sampled solution share a single tokenization of that
solution's longest ``pivot_context + pivot_token`` (the Algoverse probing project's method); each shorter row is checked to end on a token
boundary there with the pivot re-tokenizing to ``pivot_token_id`` (and, for rows that record it, at their
``position``); rows that fail are reported, not kept. Rows of another sampled solution of the same problem (not a
prefix of that text) get a tokenization of their own.
Negatives are other positions of the answer span, never a positive. The answer starts after the query, and after the
tokenizer's chat-template generation header (e.g. ``<|im_start|>assistant\n``) when the text holds one, so that
template tokens, which no probe needs a residual stream to recognise, are never negatives.

Where a text is cut decides which negatives exist. A text cut at its last pivot (all a v1 PTS row holds) ends on a
positive, so negatives can only come from before it: positives and negatives then sit at different places in the
answer, and "how far into the answer" separates them without any probe (on the shipped multi-step data the answer
index alone reached AUROC 0.75, Kolmogorov-Smirnov distance 0.47). Two recipes:

- ``"matched"`` (default): a row that carries its whole sampled ``solution`` (our search writes it) is read on that
  text, so negatives also come from after the last pivot; and for each positive a negative is drawn, across the
  dataset's texts, at the same answer index, so the position in the answer carries no label. A positive whose index
  has no negative left is set aside (``unmatched_positives``): on the shipped one-step data, 36 of 153 pivots are the
  answer's first token, predicted from the end of the prompt, a state each problem has once, so only 10 problems can
  give a negative there. :attr:`ProbeExamples.position_ks` measures what is left (0 when every positive is matched).
- ``"nearest"``: as ``"matched"``, but a positive whose index has no negative left gets one from the nearest index
  that has, and every positive is kept (KS 0.17 on the shipped one-step data).
- ``"algoverse"``: the Algoverse probing project's recipe, kept for reproduction and CONFOUNDED by the cut: each
  problem's texts end at their last pivot and negatives are drawn uniformly from each problem's answer positions.
"""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, get_args

import numpy as np
import torch
from jaxtyping import Float
from jinja2 import TemplateError
from torch import Tensor

from lens_pivotal.pts.problems import group_name
from lens_pivotal.tokens import own_tokenizer
from lens_pivotal.pts.schema import PivotalToken, load_pts

NegativeRecipe = Literal["matched", "nearest", "algoverse"]


@dataclass
class ProbeExamples:
    """Parallel per-example fields (one entry per example), ordered by text then position.

    ``texts[i]`` is the text example ``i`` reads (it repeats once per example it holds), ``positions[i]`` the token
    index whose residual is read, ``labels[i]`` 1 when the NEXT token is pivotal, ``groups[i]`` its problem.
    ``token_ids[text_index[i]]`` is the tokenization the positions index; each distinct text is cached once.
    ``source_rows[i]`` is the index of a positive's PTS row (``None`` for a negative) and ``prob_deltas[i]`` its
    ``prob_delta`` (the pivot's sign: toward or away from success). ``mismatches`` lists the rows left out and why;
    ``query_not_found`` counts texts without their query (negatives then come from the whole text);
    ``repeated_positives`` counts positives already held by another solution's text. ``answer_starts[t]`` is the
    index of text ``t``'s first answer token; ``negatives`` names the recipe that drew the negatives, and
    ``unmatched_positives`` counts the positives it set aside for want of a negative at their answer index.
    """

    texts: list[str]
    positions: list[int]
    labels: list[int]
    groups: list[str]
    text_index: list[int]
    token_ids: list[list[int]]
    source_rows: list[int | None] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    query_not_found: int = 0
    repeated_positives: int = 0
    answer_starts: list[int] = field(default_factory=list)
    prob_deltas: list[float | None] = field(default_factory=list)
    negatives: NegativeRecipe = "matched"
    unmatched_positives: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        positives = sum(self.labels)
        return (
            f"ProbeExamples({len(self)} examples: {positives} pivotal, {len(self) - positives} not; "
            f"{len(self.token_ids)} texts, {len(set(self.groups))} groups; {len(self.mismatches)} rows not mapped, "
            f"{self.repeated_positives} repeated pivot states; {self.negatives} negatives, "
            f"{self.unmatched_positives} positives without one, answer-index KS {self.position_ks:.2f})"
        )

    @property
    def answer_indices(self) -> list[int]:
        """Each example's place in its answer: the index there of the token it predicts (0: the answer's first
        token). The ``position`` baseline."""
        return [position + 1 - self.answer_starts[text] for text, position in zip(self.text_index, self.positions)]

    @property
    def position_ks(self) -> float:
        """Kolmogorov-Smirnov distance between the positives' and the negatives' :attr:`answer_indices` (0: the same
        distribution; 1: apart), ``nan`` without both classes. Above 0.15, a probe can score by position."""
        indices, labels = np.array(self.answer_indices), np.array(self.labels)
        positives, negatives = indices[labels == 1], indices[labels == 0]
        if len(positives) == 0 or len(negatives) == 0:
            return float("nan")
        grid = np.union1d(positives, negatives)
        below = [np.searchsorted(np.sort(values), grid, side="right") / len(values) for values in (positives, negatives)]
        return float(np.abs(below[0] - below[1]).max())

    @property
    def label_tensor(self) -> Tensor:
        """``labels`` as a float tensor, ready for :func:`~lens_pivotal.probes.train_probes`."""
        return torch.tensor(self.labels, dtype=torch.float32)

    @property
    def current_tokens(self) -> list[int]:
        """Each example's current token id (the token whose residual is read): the types of the control task."""
        return [self.token_ids[text][position] for text, position in zip(self.text_index, self.positions)]

    def cache(self, model: Any, **cache_kwargs: Any) -> Float[Tensor, "n_layers n_examples d_model"]:
        """``resid_post`` of every example, running each distinct text once (rows in example order).

        Keyword arguments go to :func:`lens_pivotal.cache_resid_post` (``layers``, ``embeddings``, ``batch_size``,
        ``dtype``, ``out``, ...). ``share_prefixes`` defaults to ``True`` here: PTS texts repeat their prompt (and
        several solutions of one problem their question), which then runs once.
        """
        from lens_pivotal.resid.cache import cache_resid_post

        per_text: list[list[int]] = [[] for _ in self.token_ids]
        for text, position in zip(self.text_index, self.positions):
            per_text[text].append(position)
        acts = cache_resid_post(model, self.token_ids, per_text, **{"share_prefixes": True, **cache_kwargs})
        return acts.load() if hasattr(acts, "load") else acts


def probe_examples(
    model: Any,
    rows: Iterable[PivotalToken] | str | os.PathLike,
    *,
    negatives: NegativeRecipe = "matched",
    negatives_per_positive: float = 1.0,
    seed: int = 0,
) -> ProbeExamples:
    """Positive and negative probe examples from PTS rows, tokenized as the model tokenizes.

    Args:
        model: a TransformerLens model (its ``tokenizer`` is used) or a Hugging Face tokenizer. Texts are
            tokenized without added special tokens: PTS contexts already hold the prompt exactly as the model saw it.
        rows: PTS rows (:class:`~lens_pivotal.pts.PtsData`, a list of :class:`~lens_pivotal.pts.PivotalToken`) or a
            path/hub id for :func:`~lens_pivotal.pts.load_pts`.
        negatives: ``"matched"`` (texts as long as the rows' ``solution``; negatives at the positives' answer
            indices, drawn across each dataset's texts; positives without one set aside), ``"nearest"`` (the same,
            keeping every positive, its negative from the nearest index left) or ``"algoverse"`` (texts cut at the
            last pivot, negatives uniform over each problem's answer: confounded by position, for reproduction
            only); see the module.
        negatives_per_positive: negatives drawn per positive (fewer where the answers hold too few positions).
        seed: seed of the negative sampling.

    Returns:
        :class:`ProbeExamples`; rows whose pivot does not re-tokenize to ``pivot_token_id`` at the end of their
        context are listed in ``mismatches`` (with the reason) and give no example.
    """
    if negatives_per_positive < 0:
        raise ValueError(f"negatives_per_positive must be >= 0, got {negatives_per_positive}")
    if negatives not in get_args(NegativeRecipe):
        raise ValueError(f"negatives must be one of {get_args(NegativeRecipe)}, got {negatives!r}")
    tokenizer = own_tokenizer(model) if hasattr(model, "tokenizer") else model
    if not callable(tokenizer):
        raise TypeError("model must be a TransformerLens model with a tokenizer, or a Hugging Face tokenizer")
    rows = list(load_pts(rows) if isinstance(rows, (str, os.PathLike)) else rows)
    if not rows:
        raise ValueError("rows is empty: no PTS rows to make probe examples from")
    builder = _ExampleBuilder(tokenizer, negatives, negatives_per_positive, random.Random(seed))
    for key, members in _rows_by_problem(rows).items():
        builder.add_problem(key, members)
    examples = builder.finish()
    if examples.unmatched_positives:
        warnings.warn(
            f"{examples.unmatched_positives} of {examples.unmatched_positives + sum(examples.labels)} positives had no "
            "negative at their answer index and were set aside (negatives='nearest' keeps them, matched to the nearest "
            "index, at the price of some position confound; rows with a 'solution' give more negatives)",
            stacklevel=2,
        )
    return examples


def _generation_header(tokenizer: Any) -> str:
    """What the chat template adds to open the assistant's turn (``""`` without a template)."""
    if not getattr(tokenizer, "chat_template", None):
        return ""
    messages = [{"role": "user", "content": "x"}]
    try:
        opened = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        closed = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    except (TemplateError, ValueError):
        return ""
    return opened[len(closed):] if opened.startswith(closed) else ""


def _rows_by_problem(rows: list[PivotalToken]) -> dict[tuple[str, str], list[tuple[int, PivotalToken]]]:
    grouped: dict[tuple[str, str], list[tuple[int, PivotalToken]]] = {}
    for index, row in enumerate(rows):
        if not isinstance(row, PivotalToken):
            raise TypeError(f"rows[{index}] is a {type(row).__name__}, not a PivotalToken (use lp.load_pts)")
        grouped.setdefault(row.group_key, []).append((index, row))
    return grouped


@dataclass
class _Text:
    """One tokenized solution: its string, ids, character offsets and the positive positions mapped onto it."""

    string: str
    ids: list[int]
    starts: dict[int, int]
    answer_start: int
    group: str
    family: str
    positives: dict[int, int] = field(default_factory=dict)
    negatives: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        # keys[p] identifies ids[: p + 1], i.e. the residual state at p: texts of one problem share their prefixes.
        self.keys: list[int] = []
        running = 0
        for token in self.ids:
            running = hash((running, token))
            self.keys.append(running)


class _ExampleBuilder:
    def __init__(self, tokenizer: Any, recipe: NegativeRecipe, negatives_per_positive: float, rng: random.Random) -> None:
        self.tokenizer = tokenizer
        self.recipe = recipe
        self.ratio = negatives_per_positive
        self.rng = rng
        self.texts: list[_Text] = []
        self.mismatches: list[str] = []
        self.query_not_found = 0
        self.repeated_positives = 0
        self.unmatched_positives = 0
        self.answer_header = _generation_header(tokenizer)
        self.prob_deltas: dict[int, float] = {}

    def add_problem(self, key: tuple[str, str], members: list[tuple[int, PivotalToken]]) -> None:
        """Map the problem's rows, longest text first, onto the solution texts they prefix."""
        texts: list[_Text] = []
        self.prob_deltas.update({index: row.prob_delta for index, row in members})
        for index, row in sorted(members, key=lambda member: -len(self._full_text(member[1]))):
            pivot_text = row.pivot_context + row.pivot_token
            text = next((text for text in texts if text.string.startswith(pivot_text)), None)
            if text is None:
                text = self._tokenize(self._full_text(row), row.query, group_name(key), key[0])
                texts.append(text)
            self._map(index, row, text)
        texts = [text for text in texts if text.positives]
        self._drop_repeated_positives(texts)
        if self.recipe == "algoverse":
            self._sample_uniform(texts)
        self.texts += texts

    def _full_text(self, row: PivotalToken) -> str:
        """The text a row is read on: its whole solution where it has one (not ``"algoverse"``), else up to its
        pivot."""
        if self.recipe != "algoverse" and row.solution is not None:
            return row.solution
        return row.pivot_context + row.pivot_token

    def _drop_repeated_positives(self, texts: list[_Text]) -> None:
        """Solutions that share a prefix share its states: a positive state another text already holds (another pivot
        after the same context) is dropped."""
        seen: set[int] = set()
        for text in texts:
            for position in list(text.positives):
                if text.keys[position] in seen:
                    del text.positives[position]
                    self.repeated_positives += 1
                seen.add(text.keys[position])

    def _candidates(self, texts: list[_Text]) -> list[tuple[int, int]]:
        """``(text number, position)`` of every answer state of ``texts`` that is no positive in any of them (whichever
        token followed it there), each state once (texts of one problem share their prefixes)."""
        seen = {text.keys[position] for text in texts for position in text.positives}
        candidates = []
        for number, text in enumerate(texts):
            # A position predicts the token after it: the answer's predictors start one before its first token.
            for position in range(max(text.answer_start - 1, 0), len(text.ids) - 1):
                if text.keys[position] not in seen:
                    seen.add(text.keys[position])
                    candidates.append((number, position))
        return candidates

    def _sample_uniform(self, texts: list[_Text]) -> None:
        """The Algoverse recipe: negatives drawn uniformly from one problem's answer states."""
        candidates = self._candidates(texts)
        wanted = min(round(self.ratio * sum(len(text.positives) for text in texts)), len(candidates))
        for number, position in self.rng.sample(candidates, wanted):
            texts[number].negatives.append(position)

    def _sample_matched(self) -> None:
        """In shuffled rounds over a dataset's positives (``negatives_per_positive`` of them), one negative per positive
        from any of the dataset's texts at the positive's answer index. Where that index has none left: the nearest
        index that has one (``"nearest"``), or (``"matched"``) nothing, and a positive left unmatched in the first
        round is set aside, so that every answer index holds as many negatives per positive as any other."""
        for family in sorted({text.family for text in self.texts}):
            texts = [text for text in self.texts if text.family == family]
            by_index: dict[int, list[tuple[int, int]]] = {}
            for number, position in self._candidates(texts):
                by_index.setdefault(position + 1 - texts[number].answer_start, []).append((number, position))
            targets = [(text, position) for text in texts for position in text.positives]
            wanted = round(self.ratio * len(targets))
            for round_number, (text, position) in _rounds(targets, wanted, self.rng):
                index = self._negative_index(by_index, position + 1 - text.answer_start)
                if index is None:
                    if round_number == 0:
                        del text.positives[position]
                        self.unmatched_positives += 1
                    continue
                number, drawn = by_index[index].pop(self.rng.randrange(len(by_index[index])))
                texts[number].negatives.append(drawn)
                if not by_index[index]:
                    del by_index[index]

    def _negative_index(self, by_index: dict[int, list[tuple[int, int]]], target: int) -> int | None:
        if target in by_index or not by_index:
            return target if target in by_index else None
        return min(by_index, key=lambda index: (abs(index - target), index)) if self.recipe == "nearest" else None

    def _tokenize(self, string: str, query: str, group: str, family: str) -> _Text:
        encoded = self.tokenizer(string, add_special_tokens=False, return_offsets_mapping=True)
        starts: dict[int, int] = {}
        for token, (start, end) in enumerate(encoded["offset_mapping"]):
            if end > start:
                starts.setdefault(start, token)
        query_at = string.find(query)
        if query_at < 0:
            self.query_not_found += 1
            answer_start = 0
        else:
            answer_at = query_at + len(query)
            header_at = string.find(self.answer_header, answer_at) if self.answer_header else -1
            answer_at = header_at + len(self.answer_header) if header_at >= 0 else answer_at
            answer_start = min((token for start, token in starts.items() if start >= answer_at), default=len(starts))
        return _Text(string, list(encoded["input_ids"]), starts, answer_start, group, family)

    def _map(self, index: int, row: PivotalToken, text: _Text) -> None:
        where = f"row {index} ({text.group}, pivot {row.pivot_token!r})"
        pivot = text.starts.get(len(row.pivot_context))
        if pivot is None:
            self.mismatches.append(f"{where}: pivot_context does not end on a token boundary when re-tokenized")
        elif text.ids[pivot] != row.pivot_token_id:
            found = self.tokenizer.decode([text.ids[pivot]])
            self.mismatches.append(
                f"{where}: re-tokenizes to id {text.ids[pivot]} ({found!r}), not pivot_token_id {row.pivot_token_id}"
            )
        elif row.position is not None and row.position != pivot:
            self.mismatches.append(
                f"{where}: the context re-tokenizes differently (pivot at token {pivot}, recorded position {row.position})"
            )
        elif pivot == 0:
            self.mismatches.append(f"{where}: the pivot is the first token, so no position predicts it")
        else:
            text.positives.setdefault(pivot - 1, index)

    def finish(self) -> ProbeExamples:
        """Draw matched negatives, then lay every example out in text, then position, order."""
        if self.recipe != "algoverse":
            self._sample_matched()
        self.texts = [text for text in self.texts if text.positives or text.negatives]
        examples = ProbeExamples(
            [], [], [], [], [], [], [], self.mismatches, self.query_not_found, self.repeated_positives,
            negatives=self.recipe, unmatched_positives=self.unmatched_positives,
        )
        for text_number, text in enumerate(self.texts):
            examples.answer_starts.append(text.answer_start)
            labelled = {position: (1, row) for position, row in text.positives.items()}
            labelled.update({position: (0, None) for position in text.negatives})
            examples.token_ids.append(text.ids)
            for position in sorted(labelled):
                label, row = labelled[position]
                examples.texts.append(text.string)
                examples.positions.append(position)
                examples.labels.append(label)
                examples.groups.append(text.group)
                examples.text_index.append(text_number)
                examples.source_rows.append(row)
                examples.prob_deltas.append(None if row is None else self.prob_deltas[row])
        return examples


def _rounds(items: list[Any], count: int, rng: random.Random) -> list[tuple[int, Any]]:
    """``count`` items as ``(round, item)``: whole shuffled passes over ``items``, then part of one more."""
    drawn: list[tuple[int, Any]] = []
    while len(drawn) < count:
        drawn += [(len(drawn) // len(items), item) for item in rng.sample(items, len(items))]
    return drawn[:count]
