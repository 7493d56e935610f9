"""Generation: logits processors, the decode loops and the compiled, bucketed generate function.

Layers, each usable alone:
- `processors`: pure functions of next-token logits (HF semantics).
- `sampling.decode` / `beam_search.beam_search`: `tf.while_loop`s over a
  `next(tokens, cache, index)` callback; they never see a model.
- `prefill.prefill`: the prompt's forward pass into the cache, a loop over chunks of it.
- `engine.make_generate_fn`: a model wired into the loops as one `tf.function` (XLA by
  default) whose run-time settings are tensor inputs; the SavedModel exporter wraps it.
- `engine.generate`: config checks, left re-padding, buckets (`tfdialogpt.padding`),
  memoised compiled functions (`buckets.COMPILED`); `DialoGPT.generate` calls it.

Names are imported lazily, so TF-free code can import `tfdialogpt.generation.buckets`'s
neighbours without loading TensorFlow.
"""

from __future__ import annotations

from tfdialogpt._lazy import lazy_names

_PUBLIC = {
    "COMPILED": "tfdialogpt.generation.buckets",
    "bucket_shapes": "tfdialogpt.padding",
    "GENERATE_INPUTS": "tfdialogpt.generation.engine",
    "GenerationOutput": "tfdialogpt.generation.engine",
    "generate": "tfdialogpt.generation.engine",
    "make_generate_fn": "tfdialogpt.generation.engine",
    "next_token_fn": "tfdialogpt.generation.engine",
    "beam_search": "tfdialogpt.generation.beam_search",
    "SamplingParams": "tfdialogpt.generation.sampling",
    "decode": "tfdialogpt.generation.sampling",
}

__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_names(__name__, globals(), _PUBLIC)
