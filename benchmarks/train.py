"""Training throughput: tfdialogpt (Keras `fit`) against HF transformers PyTorch, same shapes.

Both sides train the same GPT-2 shape on the same random batch [B, T] with AdamW, global-norm
clipping at 1.0 and dropout 0.1, and count B * T tokens per optimizer step. Each side runs in
its own child process (one library's thread pools never compete with the other's), after
warmup steps that absorb tracing / XLA compilation.

    python benchmarks/train.py                        # DialoGPT-small shape, B=4, T=128
    python benchmarks/train.py --layers 4 --hidden 256 --heads 4 --vocab 2048 --batch-size 32 --seq-len 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def batch(args):
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(0, args.vocab, (args.batch_size, args.seq_len + 1)).astype(np.int32)
    return ids[:, :-1], ids[:, 1:]


def run_tensorflow(args) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from tfdialogpt import DialoGPT, DialoGPTConfig
    from tfdialogpt.training import TrainingSettings, dtype_policy
    from tfdialogpt.training.fit import compile_for_training

    keras.utils.set_random_seed(0)
    config = DialoGPTConfig(
        vocab_size=args.vocab,
        max_positions=max(1024, args.seq_len),
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
    )
    with dtype_policy(args.precision):
        model = DialoGPT(config)
    settings = TrainingSettings(learning_rate=1e-4, warmup_steps=0, clip_norm=1.0)
    compile_for_training(model, settings, total_updates=10_000, jit_compile=args.jit)
    inputs, labels = batch(args)
    element = ({"input_ids": inputs, "attention_mask": np.ones_like(inputs)}, labels, np.ones(labels.shape, np.float32))
    steps = args.warmup + args.steps
    dataset = tf.data.Dataset.from_tensors(element).repeat(steps).prefetch(2)

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 == args.warmup:
                float(logs["loss"])  # wait for the step to finish
                self.start = time.perf_counter()

        def on_train_end(self, logs=None):
            self.seconds = time.perf_counter() - self.start

    clock = Clock()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[clock], verbose=0)
    return {"seconds_per_step": clock.seconds / args.steps}


def run_pytorch(args) -> dict:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=args.vocab,
        n_positions=max(1024, args.seq_len),
        n_embd=args.hidden,
        n_layer=args.layers,
        n_head=args.heads,
    )
    model = GPT2LMHeadModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    inputs, labels = batch(args)
    full = torch.tensor(inputs, dtype=torch.long)
    target = torch.tensor(labels, dtype=torch.long)

    def step():
        logits = model(full).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    float(loss)
    return {"seconds_per_step": (time.perf_counter() - start) / args.steps, "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (tracing, XLA)")
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--no-jit", dest="jit", action="store_false", help="TensorFlow without XLA")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="alternate the two sides this many times and keep each side's best (a shared "
        "machine's load then hurts both alike)",
    )
    parser.add_argument("--child", choices=["tensorflow", "pytorch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        result = run_tensorflow(args) if args.child == "tensorflow" else run_pytorch(args)
        print("RESULT " + json.dumps(result))
        return 0

    forwarded = list(argv if argv is not None else sys.argv[1:])
    results = {}
    for _ in range(args.rounds):
        for side in ("pytorch", "tensorflow"):
            out = subprocess.run(
                [sys.executable, __file__, *forwarded, "--child", side], capture_output=True, text=True, check=False
            )
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if out.returncode or not lines:
                print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
                return 1
            result = json.loads(lines[-1][len("RESULT ") :])
            result["tokens_per_second"] = args.batch_size * args.seq_len / result["seconds_per_step"]
            if side not in results or result["tokens_per_second"] > results[side]["tokens_per_second"]:
                results[side] = result
    ratio = results["tensorflow"]["tokens_per_second"] / results["pytorch"]["tokens_per_second"]
    shape = (
        f"{args.layers} layers x {args.hidden} hidden x {args.heads} heads, vocab {args.vocab}, "
        f"batch {args.batch_size} x {args.seq_len} tokens"
    )
    print(f"training throughput, {shape}, {os.cpu_count()} CPUs, best of {args.rounds} alternating runs")
    tf_label = f"tfdialogpt Keras fit ({args.precision}{', XLA' if args.jit else ''})"
    for label, side in ((tf_label, "tensorflow"), ("HF transformers PyTorch", "pytorch")):
        r = results[side]
        print(f"  {label:<44} {r['tokens_per_second']:9.0f} tokens/s  ({r['seconds_per_step'] * 1000:.0f} ms/step)")
    print(f"  speed-up: {ratio:.2f}x (target 1.2x)")
    print(json.dumps({"shape": shape, "results": results, "speedup": ratio}))
    return 0


if __name__ == "__main__":
    from tfdialogpt._quiet import import_tensorflow

    import_tensorflow()  # first, so no later import prints TensorFlow's native start-up lines
    sys.exit(main())
