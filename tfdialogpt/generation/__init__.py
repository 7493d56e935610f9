"""Generation: logits processors, the decode loops and the compiled, bucketed generate function.

Layers, each usable alone:
- `processors`: pure functions of next-token logits (HF semantics).
- `sampling.decode` / `beam_search.beam_search`: `tf.while_loop`s over a
  `next(tokens, cache, index)` callback; they never see a model.
- `engine.make_generate_fn`: a model wired into the loops as one `tf.function` (XLA by
  default) whose sampling controls are tensor inputs; the SavedModel exporter wraps it.
- `engine.generate`: argument checks, left re-padding, buckets (`buckets`), memoised
  compiled functions; `DialoGPT.generate` calls it.
"""

from tfdialogpt.generation.beam_search import beam_search
from tfdialogpt.generation.buckets import COMPILED, bucket_shapes
from tfdialogpt.generation.engine import (
    GENERATE_INPUTS,
    GenerationOutput,
    generate,
    make_generate_fn,
    next_token_fn,
)
from tfdialogpt.generation.sampling import SamplingParams, decode

__all__ = [
    "COMPILED",
    "GENERATE_INPUTS",
    "GenerationOutput",
    "SamplingParams",
    "beam_search",
    "bucket_shapes",
    "decode",
    "generate",
    "make_generate_fn",
    "next_token_fn",
]
