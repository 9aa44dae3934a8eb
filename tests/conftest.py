"""Shared fixtures: one throwaway model cache per test session, and the embedded model converted once into it."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from lens_pivotal.paths import CACHE_ENV_VAR

_OWN_CACHE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """``$LENS_PIVOTAL_CACHE`` for the whole run, set before any test module is imported (so nothing a module builds
    at import time lands in the user's real cache; notebook kernels inherit it); a preset value is kept."""
    if CACHE_ENV_VAR not in os.environ:
        config.stash[_OWN_CACHE] = tempfile.mkdtemp(prefix="lens_pivotal_cache_")
        os.environ[CACHE_ENV_VAR] = config.stash[_OWN_CACHE]


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWN_CACHE in config.stash:
        del os.environ[CACHE_ENV_VAR]
        shutil.rmtree(config.stash[_OWN_CACHE], ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def session_cache_dir() -> Path:
    """The run's model cache (``$LENS_PIVOTAL_CACHE``)."""
    return Path(os.environ[CACHE_ENV_VAR])


@pytest.fixture(scope="session")
def embedded_dir(session_cache_dir: Path) -> Path:
    """The embedded SmolLM2 converted to a Hugging Face directory, once per session (~25 s)."""
    from lens_pivotal.embedded import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def tiny_qwen3_model(session_cache_dir: Path):
    """A tiny random Qwen3 (3 blocks, d_model 64) as a TransformerLens model, shared by the PatchScope tests."""
    import lens_pivotal as lp
    from lens_pivotal.testing import tiny_qwen_dir

    return lp.load_model(tiny_qwen_dir("qwen3"), device="cpu")


@pytest.fixture(scope="session")
def qwen3_tok(session_cache_dir: Path):
    """The exact Qwen3 tokenizer, rebuilt offline (shared by the probe tests)."""
    from lens_pivotal.testing import qwen3_tokenizer

    return qwen3_tokenizer()


def synthetic_pts_rows(tokenizer, n_problems: int = 8):
    """PTS rows with two pivots per problem on one solution each (carried as ``solution``), valid under ``tokenizer``
    (for probe tests). The pivots sit at answer indices that vary between problems, so that each has states of other
    problems to match a negative to."""
    from lens_pivotal.pts import PivotalToken

    rows = []
    for item in range(n_problems):
        a, b = 3 + item, 11 + 2 * item
        query = f"Sam has {a} apples and buys {b} more. How many apples does Sam have?"
        ids = tokenizer(f"{query} Sam had {a}, then bought {b}, so {a} + {b} = {a + b}. The answer is {a + b}.",
                        add_special_tokens=False)["input_ids"]
        for pivot in (len(ids) - 12 - item % 3, len(ids) - 4 - item % 2):
            rows.append(PivotalToken(
                model_id="synthetic", query=query, pivot_context=tokenizer.decode(ids[:pivot]),
                pivot_token=tokenizer.decode([ids[pivot]]), pivot_token_id=ids[pivot], prob_before=0.3,
                prob_after=0.7 if pivot % 2 else 0.05, task_type="arithmetic", dataset_id="synthetic",
                dataset_item_id=str(item), solution=tokenizer.decode(ids),
            ))
    return rows


@pytest.fixture(scope="session")
def synthetic_rows(qwen3_tok):
    """Synthetic PTS rows of 8 problems under the Qwen3 tokenizer."""
    return synthetic_pts_rows(qwen3_tok)


LAYERNORM_FAMILIES = ("gpt2", "neox")
TINY_FAMILIES = ("qwen3", "qwen2", "llama", *LAYERNORM_FAMILIES)  # RMSNorm, then LayerNorm
FAMILIES = (*TINY_FAMILIES, "embedded")


def family_params(families: tuple[str, ...] = FAMILIES) -> list:
    """``families`` as ``pytest.mark.parametrize`` values, the embedded SmolLM2 marked slow."""
    return [pytest.param(arch, marks=[pytest.mark.slow] if arch == "embedded" else []) for arch in families]


def family_dir(arch: str):
    """The model directory of a tiny random family, or of the embedded SmolLM2 (``"embedded"``)."""
    from lens_pivotal.testing import tiny_layernorm_dir, tiny_llama_dir, tiny_qwen_dir

    if arch == "embedded":
        from lens_pivotal.embedded import embedded_model_dir

        return embedded_model_dir()
    if arch in LAYERNORM_FAMILIES:
        return tiny_layernorm_dir(arch)
    return tiny_llama_dir() if arch == "llama" else tiny_qwen_dir(arch)


@pytest.fixture(scope="session")
def family_models(session_cache_dir: Path):
    """``family_models(arch) -> (bridge, plain HF model)``: the same weights loaded twice, once per session."""
    from transformers import AutoModelForCausalLM

    import lens_pivotal as lp

    loaded = {}

    def load(arch: str):
        if arch not in loaded:
            directory = family_dir(arch)
            reference = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
            loaded[arch] = (lp.load_model(directory, device="cpu"), reference)
        return loaded[arch]

    return load


def in_our_convention(reference, hidden: torch.Tensor) -> torch.Tensor:
    """A plain HF model's residual state as ``resid_post`` holds it: in compatibility mode a LayerNorm model's writing
    weights are centred, so its stream is HF's minus the mean over d_model (which no LayerNorm sees); an RMSNorm
    model's is HF's own. Decided from the HF config alone, not from the bridge."""
    if reference.config.model_type in ("gpt2", "gpt_neox"):
        return hidden - hidden.mean(-1, keepdim=True)
    return hidden


def hf_block_states(reference, ids: torch.Tensor) -> list[torch.Tensor]:
    """The embedding and every block's output ([batch, seq, d_model] each) of the plain HF ``reference``: HF
    ``hidden_states`` with the last one replaced by the last block's own output, before the final norm, as
    ``blocks.{n - 1}.hook_resid_post`` holds it."""
    from lens_pivotal.testing import decoder_layers

    captured = {}

    def grab(module, inputs, output):
        captured["last"] = output[0] if isinstance(output, tuple) else output

    handle = decoder_layers(reference)[-1].register_forward_hook(grab)
    try:
        with torch.no_grad():
            states = list(reference(ids, output_hidden_states=True).hidden_states)
    finally:
        handle.remove()
    states[-1] = captured["last"]
    return states


def hf_resid_states(reference, ids: torch.Tensor) -> list[torch.Tensor]:
    """:func:`hf_block_states` in our convention (:func:`in_our_convention`): what ``cache_resid_post`` must return."""
    return [in_our_convention(reference, state) for state in hf_block_states(reference, ids)]


@functools.lru_cache(maxsize=None)
def _tokenizer_in(directory: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def checkpoint_tokenizer(reference):
    """The checkpoint's own tokenizer, loaded once from the plain HF ``reference`` model's directory."""
    return _tokenizer_in(str(reference.name_or_path))


def hf_token_ids(reference, text: str) -> torch.Tensor:
    """``[1, seq]`` ids from the checkpoint's own tokenizer with its defaults: the independent reference for the
    package's tokenization rule."""
    return torch.tensor([checkpoint_tokenizer(reference)(text)["input_ids"]])


def sklearn_group_folds(groups, labels, n_folds: int, seed: int):
    """Fold index per row from scikit-learn's ``StratifiedGroupKFold`` (shuffled, seeded): the reference the probes'
    grouped cross-validation must follow."""
    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold

    folds = np.zeros(len(groups), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=min(n_folds, len(set(groups))), shuffle=True, random_state=seed)
    for fold, (_, test) in enumerate(splitter.split(np.zeros(len(groups)), np.asarray(labels), np.asarray(groups))):
        folds[test] = fold
    return folds
