"""What the served per-row n-gram ban costs a decode, side by side with the graphs without it.

For each (graph, batch) cell the served decode function (`make_generate_fn(per_row=True)`, what
the export's generate and chat signatures run) is built three ways in one process and timed
round-robin (drift hits all alike): without an n-gram ban (what exports ran before the size
became a per-row input, for a model whose generation_config has none), with the model's static
size baked in (what they ran for a model that has one), and with the per-row ban
(`max_no_repeat_ngram_size=8`) asked for size 3 on every row. Greedy, exactly `--new-tokens`
new tokens after a `--prompt`-token prompt, random weights of the DialoGPT-small shape; the
per-row and the static ban must give the same tokens.

    python benchmarks/ngram.py                   # DialoGPT-small, xla and plain, batch 1 and 8
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np

CELLS = [("xla", 1), ("xla", 8), ("plain", 1), ("plain", 8)]
SIZE, BOUND = 3, 8
VARIANTS = ("no ban", f"static {SIZE}", f"per row ({SIZE}, bound {BOUND})")


def build(model, graph: str, batch: int, prompt: int, new_tokens: int, variant: int):
    from tfdialogpt.generation.engine import make_generate_fn

    xla = graph == "xla"
    return make_generate_fn(
        model,
        max_new_tokens=new_tokens,
        no_repeat_ngram_size=SIZE if variant == 1 else 0,
        max_no_repeat_ngram_size=BOUND if variant == 2 else 0,
        do_sample=False,
        jit_compile=xla,
        per_row=True,
        batch_size=batch if xla else None,
        prompt_length=prompt if xla else None,
    )


def inputs_for(model, batch: int, prompt: int, new_tokens: int, variant: int):
    import tensorflow as tf

    from tfdialogpt.generation.engine import GENERATE_INPUTS
    from tfdialogpt.generation_config import SETTINGS

    ids = np.random.default_rng(0).integers(0, model.config.eos_token_id, (batch, prompt)).astype(np.int32)
    inputs = {"input_ids": tf.constant(ids), "attention_mask": tf.ones_like(tf.constant(ids))}
    for name, dtype in GENERATE_INPUTS[2:]:
        inputs[name] = tf.fill([batch], tf.constant(SETTINGS[name].wire_default, dtype))
    inputs["max_new_tokens"] = inputs["min_new_tokens"] = tf.fill([batch], new_tokens)
    if variant == 2:
        inputs["no_repeat_ngram_size"] = tf.fill([batch], SIZE)
    return inputs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=("small", "medium", "large"))
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--graph", choices=("xla", "plain"), default=None, help="only this graph's cells")
    args = parser.parse_args(argv)

    from tfdialogpt import DialoGPT
    from tfdialogpt.config import DialoGPTConfig

    load = os.getloadavg()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    model = DialoGPT(DialoGPTConfig.preset(args.preset))
    names = " | ".join(f"{v} ms" for v in VARIANTS)
    print(f"| graph | batch | {names} | per row / no ban | per row / static | per row = static tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for graph, batch in CELLS:
        if args.graph and graph != args.graph:
            continue
        runs = []
        for variant in range(len(VARIANTS)):
            fn = build(model, graph, batch, args.prompt, args.new_tokens, variant)
            inputs = inputs_for(model, batch, args.prompt, args.new_tokens, variant)
            runs.append((fn, inputs, fn(**inputs)["sequences"].numpy()))  # compiles
        times = [[] for _ in runs]
        for _ in range(args.repeats):
            for k, (fn, inputs, _) in enumerate(runs):
                start = time.perf_counter()
                fn(**inputs)["sequences"].numpy()
                times[k].append(time.perf_counter() - start)
        none, static, per_row = (statistics.median(t) * 1000 for t in times)
        same = "yes" if (runs[1][2] == runs[2][2]).all() else "NO"
        print(
            f"| {graph} | {batch} | {none:.0f} | {static:.0f} | {per_row:.0f} | {per_row / none:.3f} | "
            f"{per_row / static:.3f} | {same} |",
            flush=True,
        )
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    from tfdialogpt._quiet import import_tensorflow

    import_tensorflow()  # first, so no later import prints TensorFlow's native start-up lines
    raise SystemExit(main())
