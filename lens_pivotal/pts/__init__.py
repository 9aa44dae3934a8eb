"""Pivotal Token Search (codelion/pts) for TransformerLens models: search, problems and oracles, PTS file loading.

    from lens_pivotal.pts import arithmetic_problems, search_pivotal_tokens, load_pts
    rows = list(search_pivotal_tokens(model, arithmetic_problems(), out="pts.jsonl"))
    data = load_pts("pts.jsonl")            # or "lens_pivotal/multistep_arithmetic" (shipped), or a hub id (online)
"""

from lens_pivotal.pts.dataset import SHIPPED_DATASETS, shipped_pts_path
from lens_pivotal.pts.problems import (
    ArithmeticConfig,
    Problem,
    arithmetic_problems,
    extract_final_number,
    gsm8k_problems,
    load_problems_jsonl,
    numeric_oracle,
    parse_gsm8k_answer,
)
from lens_pivotal.pts.prompts import ARITHMETIC_ONE_SHOT, MULTISTEP_FEW_SHOT, PromptFormat, prompt_token_ids
from lens_pivotal.pts.rollouts import HFRollouts, SamplingConfig, VLLMRollouts
from lens_pivotal.pts.schema import PivotalToken, PtsData, PtsFormatError, load_pts, load_shipped_pts
from lens_pivotal.pts.search import SearchConfig, search_pivotal_tokens
from lens_pivotal.pts.summary import summarize

__all__ = [
    "ARITHMETIC_ONE_SHOT",
    "ArithmeticConfig",
    "HFRollouts",
    "MULTISTEP_FEW_SHOT",
    "PivotalToken",
    "Problem",
    "PromptFormat",
    "PtsData",
    "PtsFormatError",
    "SHIPPED_DATASETS",
    "SamplingConfig",
    "SearchConfig",
    "VLLMRollouts",
    "arithmetic_problems",
    "extract_final_number",
    "gsm8k_problems",
    "load_problems_jsonl",
    "load_pts",
    "load_shipped_pts",
    "numeric_oracle",
    "parse_gsm8k_answer",
    "prompt_token_ids",
    "search_pivotal_tokens",
    "shipped_pts_path",
    "summarize",
]
