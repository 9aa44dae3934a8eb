"""PTS rows in the shapes their consumers read: DPO preference pairs with a *measured* counterpart token, and one
residual vector per pivot for tools that cluster steering directions.

A DPO pair needs a token to set against the pivot. For a positive pivot (it raised P(success)) the rejected token is
an alternative next token whose P(success), estimated by our own rollouts from the same context, is lower than the
pivot's by at least the threshold; for a negative pivot the chosen token is an alternative that is better by as much.
Each rollout is graded as the search grades it: the whole answer (every token after the prompt) goes to the oracle.
Rows where no candidate is measured to qualify are left out and counted, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from lens_pivotal.model import resid_post_hook
from lens_pivotal.pts.problems import Problem, numeric_oracle
from lens_pivotal.pts.prompts import PROMPT_PRESETS, PromptFormat, prompt_token_ids
from lens_pivotal.pts.rollouts import RolloutBackend
from lens_pivotal.pts.schema import PivotalToken
from lens_pivotal.pts.search import derive_seed, graded_rollouts
from lens_pivotal.resid.cache import cache_resid_post
from lens_pivotal.tokens import own_tokenizer, string_ids


@dataclass
class DpoExport:
    """The pairs, and how many rows were left out and why (``reasons``: row index → reason)."""

    pairs: list[dict[str, Any]]
    reasons: dict[int, str] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        """Rows without a pair."""
        return len(self.reasons)


@dataclass(frozen=True)
class CounterpartSearch:
    """How counterparts are measured: ``candidates`` most likely alternative next tokens, each scored by
    ``num_samples`` rollouts of at most ``max_new_tokens`` tokens, kept if P(success) differs from the pivot's (also
    re-measured) by at least ``prob_threshold``."""

    candidates: int = 5
    num_samples: int = 16
    max_new_tokens: int = 64
    prob_threshold: float = 0.2
    seed: int = 0


def dpo_pairs(
    model: Any,
    rows: Iterable[PivotalToken],
    problems: Sequence[Problem],
    backend: RolloutBackend,
    *,
    oracle: Callable[[str, str], bool] = numeric_oracle,
    search: CounterpartSearch = CounterpartSearch(),
    prompt: PromptFormat | None = None,
    progress: bool = True,
) -> DpoExport:
    """``{"prompt", "chosen", "rejected", "metadata"}`` pairs for the rows whose counterpart is measured.

    ``problems`` give each row's question and reference answer (matched by ``dataset_id`` and ``dataset_item_id``);
    ``backend`` samples continuations (``lens_pivotal.pts.search.hf_backend(model, sampling)``, which samples through
    the hooks attached to the bridge while any are). ``prompt`` is the format the rows were searched with (a search's
    ``.progress.jsonl`` records it: ``PromptFormat.from_dict(settings["prompt"])``): the answer, which the oracle
    grades whole, starts where the question's prompt ends in ``pivot_context``. By default it is the longest of the
    named formats (:data:`~lens_pivotal.pts.prompts.PROMPT_PRESETS`) that ``pivot_context`` starts with; a row that
    starts with no such prompt is left out.
    """
    answers = {(problem.dataset_id, problem.item_id): problem for problem in problems}
    export = DpoExport([])
    for index, row in enumerate(tqdm(list(rows), desc="DPO counterparts", unit="row", disable=not progress)):
        problem = answers.get((row.dataset_id, row.dataset_item_id))
        if problem is None:
            export.reasons[index] = f"no problem {row.dataset_id}#{row.dataset_item_id} among the {len(problems)} given"
            continue
        pair = _pair(model, row, problem, backend, oracle, search, prompt)
        if isinstance(pair, str):
            export.reasons[index] = pair
        else:
            export.pairs.append(pair)
    return export


def _pair(model: Any, row: PivotalToken, problem: Problem, backend: RolloutBackend, oracle: Callable[[str, str], bool],
          search: CounterpartSearch, prompt: PromptFormat | None) -> dict[str, Any] | str:  # fmt: skip
    """The row's pair, or why there is none."""
    context = string_ids(model, row.pivot_context)
    if row.position is not None and len(context) != row.position:
        return f"pivot_context re-tokenizes to {len(context)} tokens, not the recorded position {row.position}"
    prompt_ids = _prompt_ids(own_tokenizer(model), problem.question, context, prompt)
    if prompt_ids is None:
        formats = "the prompt format given" if prompt else f"any of the named formats {sorted(PROMPT_PRESETS)}"
        return f"pivot_context does not start with the question's prompt in {formats}: pass the search's prompt="
    with torch.no_grad():
        logits = model(torch.tensor([context]))[0, -1]
    order = [int(token) for token in logits.topk(search.candidates + 1).indices if int(token) != row.pivot_token_id]
    answer = _AnswerSoFar(problem, prompt_ids, context[len(prompt_ids) :])
    measured = {token: _success(model, backend, oracle, answer, token, search) for token in order[: search.candidates]}
    pivot = _success(model, backend, oracle, answer, row.pivot_token_id, search)
    if row.prob_delta > 0:
        counterpart = min(measured, key=measured.get)
        chosen, rejected, qualifies = row.pivot_token_id, counterpart, pivot - measured[counterpart] >= search.prob_threshold
    else:
        counterpart = max(measured, key=measured.get)
        chosen, rejected, qualifies = counterpart, row.pivot_token_id, measured[counterpart] - pivot >= search.prob_threshold
    if not qualifies:
        return f"no candidate differs from the pivot's P(success) {pivot:.2f} by {search.prob_threshold}"
    probability = {**measured, row.pivot_token_id: pivot}
    decode = own_tokenizer(model).decode
    return {
        "prompt": row.pivot_context, "chosen": decode([chosen]), "rejected": decode([rejected]),
        "metadata": {
            "prob_chosen": probability[chosen], "prob_rejected": probability[rejected], "prob_delta": row.prob_delta,
            "chosen_token_id": chosen, "rejected_token_id": rejected, "query": row.query, "dataset_id": row.dataset_id,
            "dataset_item_id": row.dataset_item_id, "num_samples": search.num_samples, "counterpart_verified": True,
        },
    }  # fmt: skip


def _prompt_ids(tokenizer: Any, question: str, context: list[int], prompt: PromptFormat | None) -> list[int] | None:
    """The prompt ``context`` starts with: ``prompt``'s for the question, or the longest of the named formats'."""
    formats = [prompt] if prompt else list(PROMPT_PRESETS.values())
    candidates = [prompt_token_ids(tokenizer, question, format_) for format_ in formats]
    matching = [ids for ids in candidates if context[: len(ids)] == ids]
    return max(matching, key=len, default=None)


@dataclass(frozen=True)
class _AnswerSoFar:
    """A row's problem, its prompt, and the answer before the pivot (the tokens after the prompt)."""

    problem: Problem
    prompt_ids: list[int]
    before_pivot: list[int]


def _success(model: Any, backend: RolloutBackend, oracle: Callable[[str, str], bool], answer: _AnswerSoFar, token: int,
             search: CounterpartSearch) -> float:  # fmt: skip
    """P(success | answer so far + token): the solved fraction of rollouts, each graded on the whole answer."""
    graded = answer.before_pivot + [token]
    context = answer.prompt_ids + graded
    seed = derive_seed(search.seed, answer.problem, context)
    _, solved = graded_rollouts(backend, own_tokenizer(model), oracle, answer.problem.answer, context, graded,
                                search.num_samples, search.max_new_tokens, seed)
    return sum(solved) / len(solved)


def steering_records(model: Any, rows: Sequence[PivotalToken], layer: int, *, batch_size: int = 16) -> list[dict[str, Any]]:
    """One record per row: ``resid_post`` of block ``layer`` at the last token of ``pivot_context`` (the state that
    chose the pivot), with the token, ``prob_delta``, the query and the row's ids."""
    contexts = [string_ids(model, row.pivot_context) for row in rows]
    acts = cache_resid_post(model, contexts, [-1] * len(rows), layers=[layer], batch_size=batch_size, progress=False)[0]
    return [
        {"layer": layer, "hook_name": resid_post_hook(layer), "vector": vector.tolist(),
         "pivot_token": row.pivot_token, "pivot_token_id": row.pivot_token_id, "prob_delta": row.prob_delta,
         "query": row.query, "dataset_id": row.dataset_id, "dataset_item_id": row.dataset_item_id}
        for row, vector in zip(rows, acts)
    ]  # fmt: skip
