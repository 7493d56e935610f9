"""Generation speed: tfdialogpt against HF transformers (PyTorch and TF/XLA) and keras-hub.

One run, the same random weights in every implementation, the same workload: greedy, a
64-token prompt, exactly 64 new tokens (EOS is suppressed so nobody stops early), batch 1 and
8, DialoGPT-small and -medium shapes. Reports new tokens per second (median of the timed
runs, prompt processing included, compilation excluded), each peer's ratio to us, our compile
time per bucket, and the batch-1 bound set by memory bandwidth: every weight is read once per
new token, so tokens/s <= measured read bandwidth / bytes of weights.

Two tfdialogpt rows: float32 (token-identical to HF) and `quantize("int8")` (int8 weights and
activations; its accuracy cost against float32 is measured by `benchmarks/quantization.py`).

The machine's speed drifts (other tenants share the host's memory bandwidth: the same run
measured 43 and 32 GB/s an hour apart, and 29 to 64 GB/s within one cell), so every contender
of a cell is started and compiled first, each in its own process, and the timed runs then go
round-robin over the contenders: drift hits every column alike. The read-bandwidth probe runs
between every two timed runs, so each run's bound comes from the bandwidth measured just
before and just after it; the percentage of the bound is the median of those per-run ratios.

    python benchmarks/generate.py            # full table (about 20 minutes on 2 cores)
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
OURS = ("tfdialogpt", "tfdialogpt_int8")
PEERS = ("hf_pytorch", "hf_tf_xla", "keras_hub_xla")
BANDWIDTH = "bandwidth"


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


def bandwidth_probe(megabytes: int = 512, passes: int = 3):
    """A callable returning the sustained read bandwidth (bytes/s) over a buffer far larger than
    the caches: `passes` back-to-back reads (about 40 ms at 40 GB/s), for the best of three ways
    of reading: an XLA matrix-vector product, the same product in the blocked form a batch-1
    decode step uses (`layers.one_row_matmul`), and TF's multi-threaded reduce_sum."""
    import tensorflow as tf

    from tfdialogpt.layers import one_row_matmul

    C = 768
    matrix = tf.ones([C, megabytes * 2**20 // 4 // C], tf.float32)
    vector = tf.ones([1, C], tf.float32)
    gemv = tf.function(lambda m, v: tf.reduce_sum(tf.matmul(v, m)), jit_compile=True)
    blocked = tf.function(lambda m, v: tf.reduce_sum(one_row_matmul(v, m)), jit_compile=True)
    total = tf.function(lambda m: tf.reduce_sum(m))
    gemv(matrix, vector).numpy(), blocked(matrix, vector).numpy(), total(matrix).numpy()
    nbytes = matrix.shape[0] * matrix.shape[1] * 4

    def measure():
        best = float("inf")
        for fn in (
            lambda: gemv(matrix, vector).numpy(),
            lambda: blocked(matrix, vector).numpy(),
            lambda: total(matrix).numpy(),
        ):
            start = time.perf_counter()
            for _ in range(passes):
                fn()
            best = min(best, (time.perf_counter() - start) / passes)
        return nbytes / best

    return measure


def weight_bytes(config, bytes_per_weight: float = 4) -> float:
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


def ours(directory, ids, new_tokens, quantize=None, jit_compile=True):
    import tensorflow as tf

    from tfdialogpt import DialoGPT
    from tfdialogpt.generation import make_generate_fn

    model = DialoGPT.from_pretrained(directory, quantize=quantize)
    B, T = ids.shape
    fn = make_generate_fn(
        model, max_new_tokens=new_tokens, do_sample=False, batch_size=B, prompt_length=T, jit_compile=jit_compile
    )

    prompt, mask = tf.constant(ids), tf.ones([B, T], tf.int32)
    one, zero, greedy = tf.constant(1.0), tf.constant(0), tf.constant(False)
    limits = {n: tf.constant(n) for n in (1, new_tokens)}

    def run(tokens=new_tokens):
        """Exactly `tokens` (1 or new_tokens) new tokens from the same compiled graph: with 1, the
        prompt pass and the first token only, so timing both splits prefill from decode steps."""
        limit = limits[tokens]
        return fn(prompt, mask, limit, one, zero, one, one, zero, limit, greedy, one)["sequences"].numpy()

    return run


def hf_pytorch(pt_model, ids, new_tokens):
    import torch

    torch.set_num_threads(os.cpu_count())
    input_ids = torch.tensor(ids, dtype=torch.long)
    mask = torch.ones_like(input_ids)

    def run():
        with torch.no_grad():
            return pt_model.generate(
                input_ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=50256,
            ).numpy()

    return run


def hf_tf_xla(directory, ids, new_tokens):
    import tensorflow as tf
    from transformers import TFGPT2LMHeadModel

    model = TFGPT2LMHeadModel.from_pretrained(directory, from_pt=True)
    generate = tf.function(
        lambda i, m: model.generate(
            i,
            attention_mask=m,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=50256,
        ),
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


# ---- driver: one process per contender, timed round-robin ------------------------------------------


def worker(args) -> int:
    """Builds one contender for one cell, runs it once (compiling), prints `READY <seconds>`,
    then answers each `RUN` line on stdin with `TIME <seconds>` (or, for the bandwidth probe,
    `BYTES_PER_SECOND <value>`), and for tfdialogpt each `FIRST` line with the seconds of the
    prompt pass and first token alone, until `QUIT`."""
    ids = np.random.default_rng(args.batch).integers(0, 50000, (args.batch, args.prompt)).astype(np.int32)
    if args.worker == BANDWIDTH:
        measure = bandwidth_probe()
        print("READY 0", flush=True)
    else:
        if args.worker in OURS:
            run = ours(args.dir, ids, args.new_tokens, quantize="int8" if args.worker.endswith("int8") else None)
        elif args.worker == "hf_pytorch":
            from transformers import GPT2LMHeadModel

            run = hf_pytorch(GPT2LMHeadModel.from_pretrained(args.dir).eval(), ids, args.new_tokens)
        elif args.worker == "hf_tf_xla":
            run = hf_tf_xla(args.dir, ids, args.new_tokens)
        else:
            run = keras_hub_xla(args.dir, ids, args.new_tokens)
        first, _ = timed(run, 0)
        print(f"READY {first}", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "RUN" and args.worker == BANDWIDTH:
            print(f"BYTES_PER_SECOND {measure()}", flush=True)
        elif command == "RUN":
            _, (seconds,) = timed(run, 1)
            print(f"TIME {seconds}", flush=True)
        elif command == "FIRST" and args.worker in OURS:
            _, (seconds,) = timed(lambda: run(1), 1)
            print(f"TIME {seconds}", flush=True)
        else:
            break
    return 0


class Contender:
    """A worker process for one contender of one cell."""

    def __init__(self, name, directory, batch, args, new_tokens):
        self.name = name
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            name,
            "--dir",
            directory,
            "--batch",
            str(batch),
            "--prompt",
            str(args.prompt),
            "--new-tokens",
            str(new_tokens),
        ]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.first = float(self._read("READY"))
        self.samples: list[float] = []
        self.bandwidth_around: list[float] = []  # per timed run: mean of the probes either side
        self.first_token: list[float] = []  # tfdialogpt: seconds of the prompt pass + first token

    def _read(self, tag):
        for line in self.process.stdout:
            if line.startswith(tag + " "):
                return line.split()[1]
        raise RuntimeError(f"{self.name} failed:\n{self.process.stderr.read()[-3000:]}")

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def run_once(self) -> float:
        self.process.stdin.write("RUN\n")
        self.process.stdin.flush()
        value = float(self._read("BYTES_PER_SECOND" if self.name == BANDWIDTH else "TIME"))
        self.samples.append(value)
        return value

    def time_first_token(self) -> float:
        self.process.stdin.write("FIRST\n")
        self.process.stdin.flush()
        value = float(self._read("TIME"))
        self.first_token.append(value)
        return value

    def close(self):
        try:
            self.process.stdin.write("QUIT\n")
            self.process.stdin.close()
        except OSError:
            pass
        self.process.wait(timeout=60)


def run_cell(shape, batch, directory, names, args, new_tokens, repeats):
    """Starts every contender (one at a time, so compile times are not inflated), then times
    them round-robin, rotating the order each round, with a bandwidth probe before and after
    every timed run. Returns {name: Contender}."""
    contenders = {}
    try:
        for name in (BANDWIDTH, *names):
            contenders[name] = Contender(name, directory, batch, args, new_tokens)
        probe = contenders[BANDWIDTH]
        before = probe.run_once()
        for round_index in range(repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                contenders[name].run_once()
                if name in OURS:
                    contenders[name].time_first_token()
                after = probe.run_once()
                contenders[name].bandwidth_around.append((before + after) / 2)
                before = after
        for name in names:
            c = contenders[name]
            print(
                f"  {shape} b{batch} {name:16s} {batch * new_tokens / c.median:7.1f} tok/s (first call "
                f"{c.first:.1f}s, runs {', '.join(f'{t:.2f}' for t in c.samples)}s, read GB/s around them "
                f"{', '.join(f'{b / 1e9:.0f}' for b in c.bandwidth_around)})",
                flush=True,
            )
        gbps = [b / 1e9 for b in probe.samples]
        print(
            f"  {shape} b{batch} read bandwidth {statistics.median(gbps):.1f} GB/s "
            f"(min {min(gbps):.1f}, max {max(gbps):.1f} over {len(gbps)} probes)",
            flush=True,
        )
        return contenders
    finally:
        for c in contenders.values():
            c.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shape, batch 1, 16 new tokens, 2 timed rounds")
    parser.add_argument("--shapes", nargs="+", default=None, help="presets (default: small medium)")
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="batch sizes (default: 1 8)")
    parser.add_argument("--prompt", type=int, default=64, help="prompt length")
    parser.add_argument("--new-tokens", type=int, default=None, help="new tokens (default 64)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per cell (default 5)")
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
    repeats = args.repeats or (2 if args.quick else 5)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}")
    print(
        f"workload: greedy, prompt {args.prompt}, {new_tokens} new tokens, median of {repeats} timed rounds, "
        f"each contender in its own process, timed round-robin\n"
    )
    rows = []
    for shape in shapes:
        config = DialoGPTConfig.preset(shape)
        with tempfile.TemporaryDirectory() as directory:
            build_reference(config, directory)
            for batch in batches:
                contenders = run_cell(shape, batch, directory, (*OURS, *args.peers), args, new_tokens, repeats)
                rows.append((shape, batch, config, contenders))
    print()
    print(format_table(rows, new_tokens))
    return 0


def percent_of_bound(contender, tokens: int, nbytes: float) -> float:
    """Median over the timed runs of (tokens/s) / (bandwidth around that run / bytes per step)."""
    runs = zip(contender.samples, contender.bandwidth_around, strict=True)
    return 100 * statistics.median((tokens / seconds) / (bandwidth / nbytes) for seconds, bandwidth in runs)


def decode_steps(contender, tokens: int, nbytes: float) -> tuple[float, float, float]:
    """(median ms of the prompt pass + first token, median ms per later decode step, median %
    of the bound for those steps): each run minus its own first-token time, over tokens - 1."""
    runs = list(zip(contender.samples, contender.first_token, contender.bandwidth_around, strict=True))
    steps = [(total - first) / (tokens - 1) for total, first, _ in runs]
    percents = [100 * (nbytes / bandwidth) / step for step, (_, _, bandwidth) in zip(steps, runs, strict=True)]
    return 1e3 * statistics.median(contender.first_token), 1e3 * statistics.median(steps), statistics.median(percents)


def format_table(rows, new_tokens) -> str:
    names = [*OURS, *PEERS]
    header = (
        "| shape | batch | "
        + " | ".join(f"{n} tok/s" for n in names)
        + " | float32 vs fastest peer | int8 vs fastest peer | compile f32 / int8 (s) | read GB/s"
        + " | batch-1 bound f32 / int8 tok/s | % of bound f32 / int8"
        + " | first token ms f32 / int8 | decode step ms f32 / int8 | decode steps % of bound f32 / int8 |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for shape, batch, config, contenders in rows:
        speed, compile_seconds = {}, {}
        for name, c in contenders.items():
            if name != BANDWIDTH:
                speed[name] = batch * new_tokens / c.median
                compile_seconds[name] = c.first - c.median
        bandwidth = contenders[BANDWIDTH].median
        fastest = max((speed[p] for p in PEERS if p in speed), default=float("nan"))
        cells = []
        for name in names:
            if name not in speed:
                cells.append("-")
            elif name in OURS:
                cells.append(f"{speed[name]:.1f}")
            else:
                cells.append(
                    f"{speed[name]:.1f} ({speed['tfdialogpt'] / speed[name]:.2f}x / "
                    f"{speed['tfdialogpt_int8'] / speed[name]:.2f}x)"
                )
        # int8: one byte per weight, plus a float32 scale per output channel (negligible).
        bounds = (bandwidth / weight_bytes(config, 4), bandwidth / weight_bytes(config, 1))
        if batch == 1:
            percents = [
                percent_of_bound(contenders[name], batch * new_tokens, weight_bytes(config, size))
                for name, size in (("tfdialogpt", 4), ("tfdialogpt_int8", 1))
            ]
            bound_cells = [f"{bounds[0]:.1f} / {bounds[1]:.1f}", f"{percents[0]:.0f}% / {percents[1]:.0f}%"]
            if new_tokens > 1:  # decode steps exist
                steps = [
                    decode_steps(contenders[name], new_tokens, weight_bytes(config, size))
                    for name, size in (("tfdialogpt", 4), ("tfdialogpt_int8", 1))
                ]
                bound_cells += [
                    f"{steps[0][0]:.0f} / {steps[1][0]:.0f}",
                    f"{steps[0][1]:.1f} / {steps[1][1]:.1f}",
                    f"{steps[0][2]:.0f}% / {steps[1][2]:.0f}%",
                ]
            else:
                bound_cells += ["-"] * 3
        else:
            bound_cells = ["-"] * 5
        lines.append(
            f"| {shape} | {batch} | "
            + " | ".join(cells)
            + f" | {speed['tfdialogpt'] / fastest:.2f}x | {speed['tfdialogpt_int8'] / fastest:.2f}x"
            + f" | {compile_seconds['tfdialogpt']:.1f} / {compile_seconds['tfdialogpt_int8']:.1f}"
            + f" | {bandwidth / 1e9:.1f} | "
            + " | ".join(bound_cells)
            + " |"
        )
    lines.append(
        f"\nratios in brackets: tfdialogpt float32 / peer and tfdialogpt int8 / peer; compile = first call "
        f"minus the median timed call (one bucket: prompt 64, {new_tokens} new); read GB/s: the median of "
        f"the bandwidth probes (one between every two timed runs); bound = read GB/s / bytes of weights; "
        f"% of bound: the median over the timed runs of tokens/s / the bound from the probes either side; "
        f"first token: the prompt pass and first token alone (same graph, max_new_tokens=1); decode step: "
        f"(run - first token) / (new tokens - 1), and its % of the bound."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    from tfdialogpt._quiet import import_tensorflow

    import_tensorflow()  # first, so no later import prints TensorFlow's native start-up lines
    sys.exit(main())
