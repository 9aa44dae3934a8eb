"""Lenses: read a residual-stream state as the model's output.

- :func:`logit_lens`: the model's own final norm and unembedding, applied to any layer.
- :class:`AffineMap`: an affine lens ``h @ W + b`` fitted by least squares onto the last block (``fit``,
  ``from_models``, ``identity``, ``save`` / ``load`` as safetensors + JSON); also the mapping ``f`` of a patchscope
  between two layers or two models.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from lens_pivotal._io import atomic_dir
from lens_pivotal.resid.cache import cache_resid_post
from lens_pivotal.tokens import Tokenization, token_ids


def logit_lens(
    model: TransformerBridge, resid: Float[Tensor, "... d_model"]
) -> Float[Tensor, "... d_vocab"]:
    """Logits from ``ln_final`` then ``unembed`` applied to ``resid`` (any leading shape).

    Applied to ``blocks.{L-1}.hook_resid_post`` this gives the model's own logits: no special case is
    needed at the last layer, because TransformerLens' resid_post is taken before the final norm.
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        return model.unembed(model.ln_final(resid.to(device=device, dtype=dtype)))


@dataclass
class AffineMap:
    """``f(h) = h @ weight + bias``: the affine lens, or a map between two models' residual streams."""

    weight: Float[Tensor, "d_in d_out"]
    bias: Float[Tensor, " d_out"]

    def __call__(self, vectors: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        """Apply the map to any leading shape."""
        if vectors.shape[-1] != self.weight.shape[0]:
            raise ValueError(f"AffineMap expects d_model {self.weight.shape[0]}, got vectors of shape {tuple(vectors.shape)}")
        weight, bias = self.weight.to(vectors.device), self.bias.to(vectors.device)
        return (vectors.to(weight.dtype) @ weight + bias).to(vectors.dtype)

    @classmethod
    def fit(
        cls, inputs: Float[Tensor, "n d_in"], targets: Float[Tensor, "n d_out"], *, ridge: float = 1e-3
    ) -> AffineMap:
        """Least squares from ``inputs`` to ``targets`` with a bias.

        ``ridge`` adds ``ridge * mean(diag(XᵀX))`` to the diagonal, which keeps the solve well posed when
        there are fewer rows than dimensions (0 gives plain least squares).
        """
        if inputs.ndim != 2 or targets.ndim != 2 or inputs.shape[0] != targets.shape[0]:
            raise ValueError(f"inputs and targets must be [n, d] with the same n, got {tuple(inputs.shape)} and {tuple(targets.shape)}")
        if inputs.shape[0] < 2:
            raise ValueError("fitting an affine map needs at least 2 rows")
        x, y = inputs.double(), targets.double()
        x_mean, y_mean = x.mean(0), y.mean(0)
        xc, yc = x - x_mean, y - y_mean
        gram = xc.T @ xc
        gram += torch.eye(gram.shape[0], dtype=gram.dtype) * ridge * gram.diagonal().mean().clamp_min(1e-12)
        weight = torch.linalg.solve(gram, xc.T @ yc)
        return cls(weight.float(), (y_mean - x_mean @ weight).float())

    @classmethod
    def identity(cls, d_model: int) -> AffineMap:
        """The map that changes nothing (the affine lens of the last block onto itself)."""
        return cls(torch.eye(d_model), torch.zeros(d_model))

    @classmethod
    def from_models(
        cls,
        source_model: TransformerBridge,
        source_layer: int,
        target_model: TransformerBridge,
        target_layer: int,
        texts: Sequence[str],
        *,
        ridge: float = 1e-3,
        batch_size: int = 16,
        tokenization: Tokenization = "tokenizer",
    ) -> AffineMap:
        """Fit on paired ``resid_post`` states of the same ``texts`` in two models (or two layers of one).

        Every token position is paired when both models tokenize a text the same way; otherwise only
        its last token is.
        """
        source_ids = [token_ids(source_model, text, tokenization=tokenization, device="cpu") for text in texts]
        target_ids = [token_ids(target_model, text, tokenization=tokenization, device="cpu") for text in texts]
        positions = [
            list(range(len(s))) if torch.equal(s, t) else [-1] for s, t in zip(source_ids, target_ids)
        ]
        x = cache_resid_post(source_model, source_ids, positions, layers=[source_layer], batch_size=batch_size, progress=False)[0]
        y = cache_resid_post(target_model, target_ids, positions, layers=[target_layer], batch_size=batch_size, progress=False)[0]
        return cls.fit(x, y, ridge=ridge)

    def save(self, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``affine_map.safetensors`` and ``affine_map.json`` to ``directory`` (atomically: all or nothing).

        Raises:
            FileExistsError: ``directory`` exists and is not empty, unless ``overwrite`` (which replaces it whole).
        """
        with atomic_dir(directory, overwrite=overwrite) as scratch:
            save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}, scratch / "affine_map.safetensors")
            meta = {"kind": "AffineMap", "d_in": self.weight.shape[0], "d_out": self.weight.shape[1]}
            (scratch / "affine_map.json").write_text(json.dumps(meta))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> AffineMap:
        """Read a map written by :meth:`save`."""
        path = Path(directory) / "affine_map.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{directory} holds no affine_map.safetensors")
        tensors = load_file(path)
        return cls(tensors["weight"], tensors["bias"])
