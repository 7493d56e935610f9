"""The chunked prefill against the one-pass prefill: latency side by side, and peak memory.

Speed: for each (graph, batch, prompt length) cell, the same generate function built twice by
`make_generate_fn`, with `prefill_chunk_size=None` (the prompt in one pass) and with the
default chunk, is timed in one process, round-robin (drift hits both alike); greedy, exactly
`--new-tokens` new tokens, random weights. "xla" is what in-process `model.generate` compiles
(batch and prompt length fixed); "plain" is what the exported `generate` signature runs (a
graph for any batch and prompt length, no XLA).

Memory (`--memory`): each variant in its own process, one plain-graph call on the widest
prompt; peak RSS (VmHWM) growth over the call, and the KV cache's share of it.

    python benchmarks/prefill.py                 # speed table (DialoGPT-small shape)
    python benchmarks/prefill.py --memory        # peak RSS of one 8 x 1008 prefill, both ways
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np

CELLS = [("xla", 1, 64), ("xla", 8, 64), ("xla", 1, 256), ("xla", 8, 256), ("xla", 1, 1000)]
CELLS += [("plain", 1, 64), ("plain", 8, 64), ("plain", 1, 256), ("plain", 8, 256), ("plain", 1, 1000)]


def build_model(preset: str):
    from tfdialogpt import DialoGPT
    from tfdialogpt.config import DialoGPTConfig

    config = DialoGPTConfig.preset(preset)
    return DialoGPT(config)


def inputs_for(model, batch: int, length: int, new_tokens: int):
    import tensorflow as tf

    from tfdialogpt.generation.engine import runtime_inputs
    from tfdialogpt.generation_config import GenerationConfig

    config = model.config
    rng = np.random.default_rng(0)
    ids = rng.integers(0, config.eos_token_id, (batch, length)).astype(np.int32)
    settings = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, seed=0)
    settings = settings.validate(vocab_size=config.vocab_size)
    settings = settings.replace(eos_token_id=config.eos_token_id, pad_token_id=config.eos_token_id)
    return dict(input_ids=tf.constant(ids), attention_mask=tf.ones_like(tf.constant(ids)), **runtime_inputs(settings))


def build_fn(model, graph: str, batch: int, length: int, new_tokens: int, chunk):
    from tfdialogpt.generation.engine import make_generate_fn

    xla = graph == "xla"
    return make_generate_fn(
        model,
        max_new_tokens=new_tokens,
        do_sample=False,
        jit_compile=xla,
        batch_size=batch if xla else None,
        prompt_length=length if xla else None,
        prefill_chunk_size=chunk,
    )


def speed(args) -> None:
    from tfdialogpt.generation.prefill import CHUNK_SIZE

    chunk_size = args.chunk or CHUNK_SIZE
    model = build_model(args.preset)
    print(f"| graph | batch | prompt | one pass ms | chunked ({chunk_size}) ms | chunked / one pass | same tokens |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for graph, batch, length in CELLS:
        if args.graph and graph != args.graph:
            continue
        inputs = inputs_for(model, batch, length, args.new_tokens)
        fns = [build_fn(model, graph, batch, length, args.new_tokens, chunk) for chunk in (None, chunk_size)]
        outputs = [fn(**inputs)["sequences"].numpy() for fn in fns]  # compiles
        times = [[], []]
        for _ in range(args.repeats):
            for k, fn in enumerate(fns):
                start = time.perf_counter()
                fn(**inputs)["sequences"].numpy()
                times[k].append(time.perf_counter() - start)
        one, chunked = (statistics.median(t) * 1000 for t in times)
        same = "yes" if (outputs[0] == outputs[1]).all() else "NO"
        print(
            f"| {graph} | {batch} | {length} | {one:.0f} | {chunked:.0f} | {chunked / one:.2f} | {same} |", flush=True
        )


def vm(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def memory_worker(args) -> None:
    model = build_model(args.preset)
    config = model.config
    width = config.max_positions - args.new_tokens
    chunk = None if args.chunk == 0 else args.chunk
    inputs = inputs_for(model, args.batch, width, args.new_tokens)
    fn = build_fn(model, "plain", args.batch, width, args.new_tokens, chunk)
    fn.get_concrete_function()  # traced, not run
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = vm("VmRSS")
    start = time.perf_counter()
    fn(**inputs)["sequences"].numpy()
    seconds = time.perf_counter() - start
    cache = args.batch * config.max_positions * 2 * config.num_layers * config.hidden_size * 4 / 2**20
    peak = vm("VmHWM") - before
    label = "one pass" if chunk is None else f"chunked ({chunk})"
    print(
        f"| {label} | {args.batch} x {width} | {seconds:.1f} | +{peak:.0f} | {cache:.0f} | +{peak - cache:.0f} |",
        flush=True,
    )


def memory(args) -> None:
    from tfdialogpt.generation.prefill import CHUNK_SIZE

    print("| prefill | rows x prompt | call s | peak RSS growth MB | of which KV cache MB | the rest MB |")
    print("|---|---|---:|---:|---:|---:|")
    for chunk in (0, args.chunk or CHUNK_SIZE):
        command = [sys.executable, __file__, "--memory-worker", "--chunk", str(chunk), "--batch", str(args.batch)]
        command += ["--preset", args.preset, "--new-tokens", str(args.new_tokens)]
        subprocess.run(command, check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=("small", "medium", "large"))
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--graph", choices=("xla", "plain"), default=None, help="only this graph's cells")
    parser.add_argument("--memory", action="store_true", help="peak RSS of one widest prefill, both ways")
    parser.add_argument("--batch", type=int, default=8, help="rows of the --memory call")
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=0, help="the chunk size to compare (default: CHUNK_SIZE)")
    args = parser.parse_args(argv)
    if args.memory_worker:
        memory_worker(args)
        return 0
    load = os.getloadavg()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    memory(args) if args.memory else speed(args)
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    from tfdialogpt._quiet import import_tensorflow

    import_tensorflow()  # first, so no later import prints TensorFlow's native start-up lines
    raise SystemExit(main())
