"""Interventions with pivotal directions: steering vectors from PTS data and steering hooks, gated by a probe.

    vectors = lp.steering_vectors(acts, examples, model=model)            # [n_layers, d_model], mean differences
    hook = lp.steering_hook(vectors, alpha=4.0, layer=12, gate=(probes, 0.5))
    with model.hooks(fwd_hooks=[hook.fwd_hook]):
        model.generate(prompt, max_new_tokens=64)
    report = lp.steering.evaluate_steering(model, heldout_problems, {"gated": hook}, built_from=vectors.config.groups)
"""

from lens_pivotal.steering.evaluation import SettingResult, SteeringReport, alpha_sweep, evaluate_steering, random_control
from lens_pivotal.steering.hooks import SteeringHook, steering_hook
from lens_pivotal.steering.plots import plot_alpha_sweep
from lens_pivotal.steering.vectors import SteeringConfig, SteeringVectors, steering_vectors

__all__ = [
    "SettingResult",
    "SteeringConfig",
    "SteeringHook",
    "SteeringReport",
    "SteeringVectors",
    "alpha_sweep",
    "evaluate_steering",
    "plot_alpha_sweep",
    "random_control",
    "steering_hook",
    "steering_vectors",
]
