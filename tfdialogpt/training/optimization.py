"""AdamW with a warmup-then-decay learning rate, clipping and gradient accumulation."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

DECAYS = ("linear", "cosine", "noam", "constant")
# Not decayed: LayerNorm scales/shifts and biases (as in GPT-2 / DialoGPT fine-tuning).
NO_WEIGHT_DECAY = ("gamma", "beta", "bias")


@keras.saving.register_keras_serializable(package="tfdialogpt")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `peak_learning_rate`, then a decay over optimizer updates.

    Decays: `linear` to 0 at `total_steps` (DialoGPT's `warmup_linear`), `cosine` to 0 at
    `total_steps`, `noam` (`peak * sqrt(warmup / step)`, the paper's noam-style schedule),
    `constant`.

    Keras calls the schedule with the optimizer's micro-step counter; with gradient
    accumulation over k batches, updates are counted as `step // k`, so warmup and decay are
    in optimizer updates either way.

    Example:
        >>> schedule = WarmupDecay(1e-4, warmup_steps=100, total_steps=1000)
        >>> float(schedule(99))  # the last warmup step reaches the peak
        0.0001
    """

    def __init__(
        self,
        peak_learning_rate: float,
        warmup_steps: int,
        total_steps: int,
        decay: str = "linear",
        accumulation_steps: int = 1,
    ):
        if decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
        if peak_learning_rate <= 0 or warmup_steps < 0 or total_steps <= 0 or accumulation_steps < 1:
            raise ValueError(
                f"need peak_learning_rate > 0, warmup_steps >= 0, total_steps > 0 and "
                f"accumulation_steps >= 1; got {peak_learning_rate}, {warmup_steps}, {total_steps}, "
                f"{accumulation_steps}"
            )
        self.peak_learning_rate = float(peak_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.decay = decay
        self.accumulation_steps = int(accumulation_steps)

    def __call__(self, step):
        update = tf.cast(tf.math.floordiv(tf.cast(step, tf.int64), self.accumulation_steps), tf.float32)
        done = update + 1.0  # updates including this one
        warmup = float(max(self.warmup_steps, 1))
        warm = tf.minimum(done / warmup, 1.0) if self.warmup_steps else tf.constant(1.0)
        span = float(max(self.total_steps - self.warmup_steps, 1))
        after = tf.clip_by_value((update - self.warmup_steps) / span, 0.0, 1.0)  # 0 -> 1 over decay
        if self.decay == "linear":
            factor = tf.where(update < self.warmup_steps, warm, 1.0 - after)
        elif self.decay == "cosine":
            factor = tf.where(update < self.warmup_steps, warm, 0.5 * (1.0 + tf.cos(math.pi * after)))
        elif self.decay == "noam":
            factor = tf.minimum(warm, tf.sqrt(warmup / done))
        else:
            factor = warm
        return self.peak_learning_rate * factor

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "decay": self.decay,
            "accumulation_steps": self.accumulation_steps,
        }


def make_optimizer(
    learning_rate: float,
    total_steps: int,
    warmup_steps: int = 0,
    decay: str = "linear",
    weight_decay: float = 0.01,
    clip_norm: float | None = 1.0,
    accumulation_steps: int = 1,
    model=None,
) -> keras.optimizers.AdamW:
    """AdamW over `WarmupDecay`, with global-norm clipping and gradient accumulation.

    Args:
        total_steps: optimizer updates in the whole run (batches / accumulation_steps).
        clip_norm: clip the global gradient norm (after accumulation); None for no clipping.
        accumulation_steps: average gradients over this many batches per update.
    """
    schedule = WarmupDecay(learning_rate, warmup_steps, total_steps, decay, accumulation_steps)
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=weight_decay,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        global_clipnorm=clip_norm if clip_norm else None,
        gradient_accumulation_steps=accumulation_steps if accumulation_steps > 1 else None,
    )
    optimizer.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY))
    return optimizer
