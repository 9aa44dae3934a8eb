"""Interventions with pivotal directions: steering vectors from PTS data and steering hooks, gated by a probe.

    vectors = lp.steering_vectors(acts, examples, model=model)            # [n_layers, d_model], mean differences
    hook = lp.steering_hook(vectors, alpha=4.0, layer=12, gate=(probes, 0.5))
    with model.hooks(fwd_hooks=[hook.fwd_hook]):
        model.generate(prompt, max_new_tokens=64)
"""

from lens_pivotal.steering.hooks import SteeringHook, steering_hook
from lens_pivotal.steering.vectors import SteeringConfig, SteeringVectors, steering_vectors

__all__ = ["SteeringConfig", "SteeringHook", "SteeringVectors", "steering_hook", "steering_vectors"]
