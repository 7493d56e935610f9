"""Generation speed: tfdialogpt against HF transformers (PyTorch and TF/XLA) and keras-hub.

One run, the same random weights in every implementation, the same workload: greedy, a
64-token prompt, exactly 64 new tokens (EOS is suppressed so nobody stops early), batch 1 and
8, DialoGPT-small and -medium shapes. Reports new tokens per second (median of the timed
runs, prompt processing included, compilation excluded), each peer's ratio to us, our compile
time per bucket, and the batch-1 bound set by memory bandwidth: every weight is read once per
new token, so tokens/s <= measured read bandwidth / bytes of weights.

    python benchmarks/generate.py            # full table (about 15 minutes on 2 cores)
    python benchmarks/generate.py --quick    # small shape, batch 1, fewer tokens: a smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

# TensorFlow and tfdialogpt are imported where used: the PyTorch worker process must not load
# TensorFlow (with both runtimes in one process HF PyTorch generate ran 15x slower here).
PEERS = ("hf_pytorch", "hf_tf_xla", "keras_hub_xla")


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    """(seconds of the first call, seconds of each of the next `repeats` calls)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, times


def read_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes/s read by an XLA reduction over a buffer far larger than the caches."""
    import tensorflow as tf

    data = tf.ones([megabytes * 2**20 // 4], tf.float32)
    total = tf.function(lambda x: tf.reduce_sum(x), jit_compile=True)
    _, times = timed(lambda: total(data).numpy(), repeats)
    return data.shape[0] * 4 / min(times)


def weight_bytes(config, bytes_per_weight: int = 4) -> int:
    """Bytes of weights one decode step reads: all but the position table (one row of it)."""
    return (config.num_parameters - (config.max_positions - 1) * config.hidden_size) * bytes_per_weight


def build_reference(config, directory: str):
    """Random GPT-2 weights written once by transformers (PyTorch safetensors)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**config.to_hf_dict())).eval()
    model.save_pretrained(directory)
    return model


# ---- the contenders: each returns a callable that runs the whole workload ----------------------------


def ours(directory, ids, new_tokens, jit_compile=True):
    import tensorflow as tf

    from tfdialogpt import DialoGPT
    from tfdialogpt.generation import make_generate_fn

    model = DialoGPT.from_pretrained(directory)
    B, T = ids.shape
    fn = make_generate_fn(model, max_new_tokens=new_tokens, do_sample=False, batch_size=B, prompt_length=T,
                          jit_compile=jit_compile)
    args = (
        tf.constant(ids), tf.ones([B, T], tf.int32), tf.constant(new_tokens), tf.constant(1.0), tf.constant(0),
        tf.constant(1.0), tf.constant(1.0), tf.constant(0), tf.constant(new_tokens), tf.constant(False),
        tf.constant(1.0),
    )
    return lambda: fn(*args)["sequences"].numpy()


def hf_pytorch(pt_model, ids, new_tokens):
    import torch

    torch.set_num_threads(os.cpu_count())
    input_ids = torch.tensor(ids, dtype=torch.long)
    mask = torch.ones_like(input_ids)

    def run():
        with torch.no_grad():
            return pt_model.generate(input_ids, attention_mask=mask, max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, do_sample=False, pad_token_id=50256).numpy()

    return run


def hf_tf_xla(directory, ids, new_tokens):
    import tensorflow as tf
    from transformers import TFGPT2LMHeadModel

    model = TFGPT2LMHeadModel.from_pretrained(directory, from_pt=True)
    generate = tf.function(
        lambda i, m: model.generate(i, attention_mask=m, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                    do_sample=False, pad_token_id=50256),
        jit_compile=True,
    )
    input_ids = tf.constant(ids)
    mask = tf.ones_like(input_ids)
    return lambda: generate(input_ids, mask).numpy()


def keras_hub_xla(directory, ids, new_tokens):
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone.from_preset(directory)
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    lm.compile(sampler="greedy")  # jit_compile defaults to True
    B, T = ids.shape
    token_ids = np.zeros((B, T + new_tokens), np.int32)
    token_ids[:, :T] = ids
    padding = np.zeros((B, T + new_tokens), bool)
    padding[:, :T] = True
    inputs = {"token_ids": token_ids, "padding_mask": padding}
    return lambda: lm.generate(inputs, stop_token_ids=None)


# ---- driver: one process per cell, so no two runtimes share (and fight over) the 2 cores -------------


def worker(args) -> int:
    """Runs one contender on one cell and prints `RESULT <tok/s> <first call s> <runs...>`."""
    ids = np.random.default_rng(args.batch).integers(0, 50000, (args.batch, args.prompt)).astype(np.int32)
    if args.worker == "tfdialogpt":
        run = ours(args.dir, ids, args.new_tokens)
    elif args.worker == "hf_pytorch":
        from transformers import GPT2LMHeadModel

        run = hf_pytorch(GPT2LMHeadModel.from_pretrained(args.dir).eval(), ids, args.new_tokens)
    elif args.worker == "hf_tf_xla":
        run = hf_tf_xla(args.dir, ids, args.new_tokens)
    else:
        run = keras_hub_xla(args.dir, ids, args.new_tokens)
    first, times = timed(run, args.repeats)
    speed = args.batch * args.new_tokens / statistics.median(times)
    print("RESULT", speed, first, *times, flush=True)
    return 0


def run_cell(name, directory, batch, args, new_tokens, repeats):
    command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--dir", directory,
               "--batch", str(batch), "--prompt", str(args.prompt), "--new-tokens", str(new_tokens),
               "--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT"):
            speed, first, *times = map(float, line.split()[1:])
            return speed, first, times
    raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shape, batch 1, 16 new tokens, 1 timed run")
    parser.add_argument("--shapes", nargs="+", default=None, help="presets (default: small medium)")
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="batch sizes (default: 1 8)")
    parser.add_argument("--prompt", type=int, default=64, help="prompt length")
    parser.add_argument("--new-tokens", type=int, default=None, help="new tokens (default 64)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per cell (default 3)")
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS, help="peers to run")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    import tensorflow as tf

    from tfdialogpt import DialoGPTConfig

    shapes = args.shapes or (["small"] if args.quick else ["small", "medium"])
    batches = args.batches or ([1] if args.quick else [1, 8])
    new_tokens = args.new_tokens or (16 if args.quick else 64)
    repeats = args.repeats or (1 if args.quick else 3)

    bandwidth = read_bandwidth()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"TF {tf.__version__}; measured read bandwidth {bandwidth / 1e9:.1f} GB/s (XLA reduce_sum)")
    print(f"workload: greedy, prompt {args.prompt}, {new_tokens} new tokens, float32, "
          f"median of {repeats} timed runs, each contender in its own process\n")
    rows = []
    for shape in shapes:
        config = DialoGPTConfig.preset(shape)
        bound = bandwidth / weight_bytes(config)
        with tempfile.TemporaryDirectory() as directory:
            build_reference(config, directory)
            for batch in batches:
                results = {}
                for name in ("tfdialogpt", *args.peers):
                    speed, first, times = run_cell(name, directory, batch, args, new_tokens, repeats)
                    results[name] = (speed, first - statistics.median(times))
                    print(f"  {shape} b{batch} {name:14s} {speed:7.1f} tok/s (first call {first:.1f}s, "
                          f"runs {', '.join(f'{t:.2f}' for t in times)}s)", flush=True)
                rows.append((shape, batch, results, bound))
    print()
    print(format_table(rows, new_tokens))
    return 0


def format_table(rows, new_tokens) -> str:
    header = "| shape | batch | tfdialogpt tok/s | " + " | ".join(f"{p} tok/s" for p in PEERS) + \
        " | vs fastest peer | compile (s) | batch-1 bound tok/s | % of bound |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for shape, batch, results, bound in rows:
        ours_speed, compile_seconds = results["tfdialogpt"]
        peers = [results[p][0] for p in PEERS if p in results]
        fastest = max(peers) if peers else float("nan")
        cells = [f"{results[p][0]:.1f} ({ours_speed / results[p][0]:.2f}x)" if p in results else "-" for p in PEERS]
        bound_cells = [f"{bound:.1f}", f"{100 * ours_speed / bound:.0f}%"] if batch == 1 else ["-", "-"]
        lines.append(f"| {shape} | {batch} | {ours_speed:.1f} | " + " | ".join(cells)
                     + f" | {ours_speed / fastest:.2f}x | {compile_seconds:.1f} | " + " | ".join(bound_cells) + " |")
    lines.append(f"\nratios in brackets: tfdialogpt / peer; compile = first call minus a timed call "
                 f"(one bucket: prompt 64, {new_tokens} new).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
