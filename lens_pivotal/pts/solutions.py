"""The whole sampled solutions behind PTS rows written before rows carried them (``PivotalToken.solution``).

The search bisects some of each problem's baseline samples, and those samples are seeded by the problem alone
(:func:`~lens_pivotal.pts.search.derive_seed` of the empty prefix), so drawing them again with the recorded settings
gives back the solutions the rows were found on. A row gets its solution only where one of them reproduces its
``pivot_context`` and ``pivot_token_id`` exactly; another CPU's kernels can flip a rare sample, and such a row keeps
``solution=None``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from lens_pivotal.pts.problems import Oracle, Problem, numeric_oracle
from lens_pivotal.pts.prompts import PromptFormat, prompt_token_ids
from lens_pivotal.pts.rollouts import stop_token_ids
from lens_pivotal.pts.schema import PivotalToken
from lens_pivotal.pts.search import SearchConfig, SuccessEstimator, hf_backend, pick_solutions
from lens_pivotal.tokens import own_tokenizer


def recover_solutions(
    model: Any,
    rows: Iterable[PivotalToken],
    problems: Iterable[Problem],
    settings: dict[str, Any],
    *,
    oracle: Oracle = numeric_oracle,
) -> list[PivotalToken]:
    """``rows`` with ``solution`` filled in wherever re-drawing the problem's bisected samples reproduces the row.

    Args:
        model: the model the search ran on (a TransformerLens bridge).
        rows: PTS rows of our search (they need ``position``); rows that already hold a solution are kept as they are.
        problems: the searched problems (matched to rows by ``dataset_id`` and ``dataset_item_id``).
        settings: the search's recorded settings (the ``"settings"`` object on the first line of its
            ``.progress.jsonl``): ``search`` and ``prompt``.
        oracle: the oracle of the search (it decides which samples were bisected).
    """
    config = SearchConfig.from_dict(settings["search"])
    prompt = PromptFormat.from_dict(settings["prompt"])
    tokenizer = own_tokenizer(model)
    backend = hf_backend(model, config.sampling)
    stops = stop_token_ids(tokenizer, getattr(model, "original_model", None))
    by_key = {(problem.dataset_id, problem.item_id): problem for problem in problems}
    drawn: dict[tuple[str, str], tuple[list[int], list[list[int]]]] = {}
    recovered = []
    for row in rows:
        key = (row.dataset_id, row.dataset_item_id)
        if row.solution is not None or row.position is None or key not in by_key:
            recovered.append(row)
            continue
        if key not in drawn:
            prompt_ids = prompt_token_ids(tokenizer, by_key[key].question, prompt)
            estimator = SuccessEstimator(backend, tokenizer, by_key[key], prompt_ids, oracle, config, stops)
            drawn[key] = prompt_ids, pick_solutions(estimator.solutions(), estimator.solved, config.solutions_per_problem)
        recovered.append(_with_solution(row, tokenizer, *drawn[key]))
    return recovered


def _with_solution(row: PivotalToken, tokenizer: Any, prompt_ids: list[int], solutions: list[list[int]]) -> PivotalToken:
    index = row.position - len(prompt_ids)
    for solution in solutions:
        if 0 <= index < len(solution) and solution[index] == row.pivot_token_id:
            if tokenizer.decode(prompt_ids + solution[:index]) == row.pivot_context:
                return dataclasses.replace(row, solution=tokenizer.decode(prompt_ids + solution))
    return row
