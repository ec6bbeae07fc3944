"""Optimizers with a lower learning rate for part of the model (a pretrained encoder being fine-tuned).

Keras 3 has no per-variable learning rates, and scaling the encoder's gradients would not help: Adam's
step does not depend on the gradient's scale. So the optimizer scales the *step*: every variable whose
path starts with a prefix in ``lr_multipliers`` is updated with ``learning_rate * multiplier`` (decoupled
weight decay, which Keras applies with the full rate, is then scaled the same way: the encoder moves
``multiplier`` times as far in every respect).
"""

from __future__ import annotations

import keras


class PartLearningRates:
    """Mixin for a Keras optimizer: ``lr_multipliers`` maps variable path prefixes to rate multipliers."""

    def __init__(self, *args, lr_multipliers: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_multipliers = dict(lr_multipliers or {})
        self._variable_multipliers = []

    def _multiplier_for(self, path: str) -> float:
        for prefix, multiplier in self.lr_multipliers.items():
            if path.startswith(prefix):
                return float(multiplier)
        return 1.0

    def build(self, variables):
        super().build(variables)
        self._variable_multipliers = [self._multiplier_for(v.path) for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self._variable_multipliers[self._get_variable_index(variable)]
        if multiplier != 1.0:
            learning_rate = learning_rate * multiplier
        return super().update_step(gradient, variable, learning_rate)

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None or not any(m != 1.0 for m in self._variable_multipliers):
            return super()._apply_weight_decay(variables)
        for variable in variables:
            if self._use_weight_decay(variable):
                multiplier = self._variable_multipliers[self._get_variable_index(variable)]
                rate = keras.ops.cast(self.learning_rate, variable.dtype) * multiplier
                variable.assign(variable - variable * keras.ops.cast(self.weight_decay, variable.dtype) * rate)

    def get_config(self):
        return {**super().get_config(), "lr_multipliers": self.lr_multipliers}


@keras.saving.register_keras_serializable(package="kseg")
class AdamW(PartLearningRates, keras.optimizers.AdamW):
    pass


@keras.saving.register_keras_serializable(package="kseg")
class Adam(PartLearningRates, keras.optimizers.Adam):
    pass


@keras.saving.register_keras_serializable(package="kseg")
class SGD(PartLearningRates, keras.optimizers.SGD):
    pass
