"""The affine lens: least squares recovers a known map, the identity is exact, files round-trip, bad shapes fail."""

from __future__ import annotations

import pytest
import torch

from lens_pivotal.lenses import AffineMap


def test_affine_map_fit_recovers_a_known_map_and_round_trips(tmp_path):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=generator)
    weight, bias = torch.randn(8, 5, generator=generator), torch.randn(5, generator=generator)
    fitted = AffineMap.fit(x, x @ weight + bias, ridge=0.0)
    torch.testing.assert_close(fitted.weight, weight, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fitted.bias, bias, atol=1e-4, rtol=1e-4)
    fitted.save(tmp_path / "map")
    loaded = AffineMap.load(tmp_path / "map")
    torch.testing.assert_close(loaded(x), fitted(x))
    with pytest.raises(ValueError, match="expects d_model 8"):
        fitted(torch.zeros(3, 7))
    with pytest.raises(ValueError, match="same n"):
        AffineMap.fit(x, x[:10])


def test_identity_changes_nothing():
    x = torch.randn(4, 6)
    assert torch.equal(AffineMap.identity(6)(x), x)
