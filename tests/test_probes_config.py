"""Probe settings are typed and checked; a wrong type or value is named."""

from __future__ import annotations

import pytest

from lens_pivotal.probes import ProbeSettings, train_probes
from test_probes_layer_probes import planted


@pytest.mark.parametrize(
    "settings, message",
    [({"solver": "sgd"}, "solver"), ({"class_weight": "auto"}, "class_weight"), ({"l2": -1.0}, "non-negative"),
     ({"val_fraction": 0.0}, "val_fraction"), ({"cv_folds": 1}, "cv_folds"), ({"dtype": "float16"}, "dtype")],
)
def test_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        ProbeSettings(**settings)


def test_settings_are_typed_and_checked():
    acts, labels, groups = planted()
    with pytest.raises(ValueError, match="solver must be one of"):
        ProbeSettings(solver="sgd")
    with pytest.raises(TypeError, match="epochs must be an int, got 1.5"):
        ProbeSettings(epochs=1.5)
    with pytest.raises(TypeError, match="l2_grid must be a tuple"):
        ProbeSettings(l2_grid=[1.0])
    with pytest.raises(TypeError, match="settings must be a ProbeSettings"):
        train_probes(acts, labels, groups=groups, settings={"l2": 1.0})
    with pytest.raises(TypeError, match="unexpected keyword argument 'l2'"):
        train_probes(acts, labels, groups=groups, l2=1.0)


def test_only_lbfgs_without_a_fixed_l2_chooses_it_by_cross_validation():
    assert ProbeSettings().chooses_l2
    assert not ProbeSettings(l2=1.0).chooses_l2 and not ProbeSettings(solver="adam").chooses_l2
