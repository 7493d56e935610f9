"""Data benchmarks: `prepare` throughput (1 and 2 workers against `encode_dialogues`), and with
`--finetune SIZES`, `finetune` on prepared shards: peak RSS at each corpus size, and steps/s
streamed against in memory.

A DialoGPT-style TSV is generated (turns of 3 to 25 words, 2 to 5 turns, some 0.0 weights);
each contender runs in its own child process, timed from the call to the end (wall clock, and
CPU seconds of the process and its workers):

- `encode_dialogues`: `read_dialogues` + `encode_dialogues` in one process, the examples in
  memory (what `finetune` does today); `tokenizers`' `encode_batch` runs its own thread pool;
- `encode_dialogues, one thread`: the same with `tokenizers` held to one thread
  (`TOKENIZERS_PARALLELISM=false`, `RAYON_NUM_THREADS=1`): the single-threaded encode issue 15
  measures `prepare` against;
- `prepare --workers K`: the same examples written to TFRecord shards + manifest.json.
  TensorFlow is imported before the clock starts (the CLI imports it first too; the import,
  about 4 s here, is printed apart).

    python benchmarks/data.py                       # 20,000 dialogues, GPT-2's tokenizer if cached
    python benchmarks/data.py --dialogues 5000 --tokenizer default --repeats 1

`--finetune 200000 5000000` (the default model and its tokenizer): the smallest size is
generated as above and prepared; a larger one is that prepared directory's shards listed again
and again (hard links, counts summed in the manifest) up to the size: the same examples
repeated, which is all a streamed run can tell apart. Then, each in its own process:

- peak RSS (`ru_maxrss`) of `tfdialogpt finetune --max-steps 20` on each size, and on the
  smallest size's TSV read into memory, for contrast;
- steps/s of `finetune` (median step time over steps 10..`--rate-steps`) from the shards and
  from the same dialogues in memory, both unshuffled (`shuffle_buffer=0`), so both train on
  the same batches in the same order (`tests/test_streaming.py` checks that) and a step costs
  the same on either: only the input pipeline differs. (Shuffled, the two orders give
  different mixes of padded widths, and the medians moved 0.93x-1.14x between runs.) And each
  pipeline's own batches/s, shuffled as training runs it (no model; the first 2,000 batches
  of an epoch, timed from the first request, so the in-memory epoch's permutation and the
  shuffle buffer's filling are in it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]

WORDS = (
    "i you we they the a an is are was were have has do does not what why how when where who good bad great "
    "fine okay thanks hello hi yes no maybe really sure think know like love hate want need go going went come "
    "time day night today tomorrow music movie game book food coffee tea work home friend family dog cat weather "
    "rain sun city trip holiday school job money , . ? ! don't it's I'm that's"
).split()


def write_tsv(path: Path, dialogues: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(dialogues):
            turns = [" ".join(rng.choices(WORDS, k=rng.randint(3, 25))) for _ in range(rng.randint(2, 5))]
            weights = [rng.choice(["1.0", "1.0", "1.0", "0.0"]) for _ in turns[:-1]]
            f.write(" EOS ".join(f"{w} {t}" for w, t in zip(weights, turns[:-1], strict=True)) + f"\t1.0 {turns[-1]}\n")


def tokenizer_dir(requested: str | None) -> str:
    """--tokenizer, else GPT-2's vocabulary as the tests cache it, else the embedded default's."""
    if requested:
        return requested
    sys.path.insert(0, str(REPO / "tests"))
    from test_tokenizer import CACHE_DIR

    return str(CACHE_DIR) if (CACHE_DIR / "vocab.json").is_file() else "default"


def child(args) -> dict:
    """One timed run (in a child process)."""
    from tfdialogpt.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(args.tokenizer)
    if args.contender in ("encode_dialogues", ONE_THREAD):
        from tfdialogpt.training.examples import encode_dialogues
        from tfdialogpt.training.readers import read_dialogues

        start, cpu = time.perf_counter(), _cpu()
        encoded = encode_dialogues(read_dialogues(args.data).dialogues, tokenizer, args.max_seq_len)
        return {"seconds": time.perf_counter() - start, "cpu": _cpu() - cpu, "examples": len(encoded.examples)}
    from tfdialogpt._quiet import import_tensorflow
    from tfdialogpt.training.prepare import prepare

    start = time.perf_counter()
    import_tensorflow()
    tf_import = time.perf_counter() - start
    start, cpu = time.perf_counter(), _cpu()
    manifest = prepare(
        args.data, args.output, tokenizer, max_seq_len=args.max_seq_len, workers=args.workers, progress=False
    )
    seconds, cpu = time.perf_counter() - start, _cpu() - cpu
    return {"seconds": seconds, "cpu": cpu, "examples": manifest["totals"]["examples"], "tf_import": tf_import}


def _cpu() -> float:
    """CPU seconds of this process and of its ended children (prepare's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


ONE_THREAD = "encode_dialogues, one thread"


def run_child(args, contender: str, workers: int, data: Path, scratch: Path) -> dict:
    output = scratch / f"out-{contender}-{workers}-{time.monotonic_ns()}"
    command = [sys.executable, __file__, "--child", contender, "--workers", str(workers), "--data", str(data)]
    command += ["--output", str(output), "--tokenizer", args.tokenizer, "--max-seq-len", str(args.max_seq_len)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if contender == ONE_THREAD:
        env.update(TOKENIZERS_PARALLELISM="false", RAYON_NUM_THREADS="1")
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"{contender} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def link_copies(base: Path, target: Path, copies: int) -> dict:
    """A prepared directory listing `base`'s shards `copies` times (hard links)."""
    target.mkdir(parents=True)
    manifest = json.loads((base / "manifest.json").read_text())
    shards = []
    for _ in range(copies):
        for shard in manifest["shards"]:
            name = f"shard-{len(shards):05d}.tfrecord"
            os.link(base / shard["file"], target / name)
            shards.append({**shard, "file": name})
    totals = {k: v * copies if k in ("dialogues", "examples", "tokens", "loss_tokens") else v
              for k, v in manifest["totals"].items()}  # fmt: skip
    manifest = {**manifest, "shards": shards, "totals": totals}
    (target / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def peak_rss_mb(command: list[str]) -> float:
    """Runs `command`; its peak resident memory in MiB."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        raise SystemExit(f"{command} failed ({status}):\n{process.stderr.read()[-3000:]}")
    return usage.ru_maxrss / 1024


def rate_child(args) -> dict:
    """Median seconds per step of `finetune` on `args.data` (in a child process)."""
    import keras

    from tfdialogpt.training import finetune

    times = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter())

    # Unshuffled: the same batches in the same order from either source (see the docstring).
    finetune(
        "default", args.data, max_steps=args.rate_steps, batch_size=8, shuffle_buffer=0, verbose=0, callbacks=[Clock()]
    )
    steps = sorted(b - a for a, b in zip(times[9:], times[10:], strict=False))
    result = {"step_seconds": steps[len(steps) // 2]}
    from tfdialogpt.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained("default")
    if Path(args.data).is_dir():
        from tfdialogpt.training.streaming import PreparedBatches

        batches = PreparedBatches(args.data, tokenizer, 8, tokenizer.eos_token_id)
    else:
        from tfdialogpt.training.examples import encode_dialogues
        from tfdialogpt.training.pipeline import DialogueBatches
        from tfdialogpt.training.readers import read_dialogues

        examples = encode_dialogues(read_dialogues(args.data).dialogues, tokenizer, 128).examples
        batches = DialogueBatches(examples, 8, tokenizer.eos_token_id)
    count, start = 0, time.perf_counter()
    for _ in batches.train_dataset(0, limit=2000):
        count += 1
    result["pipeline_batches_per_second"] = count / (time.perf_counter() - start)
    return result


def run_finetune_benchmarks(args) -> None:
    sizes = sorted(args.finetune)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        tsv = scratch / "train.tsv"
        write_tsv(tsv, sizes[0])
        base = scratch / f"prepared-{sizes[0]}"
        from tfdialogpt.training.prepare import prepare

        start = time.perf_counter()
        manifest = prepare(tsv, base, "default", max_seq_len=128, workers=2, progress=False)
        print(f"prepared {sizes[0]:,} dialogues in {time.perf_counter() - start:.0f} s: "
              f"{manifest['totals']['examples']:,} examples, {len(manifest['shards'])} shards")  # fmt: skip
        prepared = {sizes[0]: base}
        for size in sizes[1:]:
            prepared[size] = scratch / f"prepared-{size}"
            link_copies(base, prepared[size], max(1, round(size / sizes[0])))
        cli = [sys.executable, "-m", "tfdialogpt", "finetune", "--model", "default", "--max-steps", "20", "--quiet"]
        rows = []
        for name, data in [*((f"shards, {n:,} dialogues", d) for n, d in prepared.items()),
                           (f"in memory, {sizes[0]:,} dialogues (TSV)", tsv)]:  # fmt: skip
            rss = peak_rss_mb([*cli, "--train", str(data), "--output", str(scratch / f"out-{len(rows)}")])
            rows.append((name, rss))
            print(f"  {name}: peak RSS {rss:,.0f} MiB", flush=True)
        print("\n| finetune --max-steps 20 | peak RSS (MiB) | vs the smallest shards |\n|---|---|---|")
        for name, rss in rows:
            print(f"| {name} | {rss:,.0f} | {rss - rows[0][1]:+,.0f} MiB ({rss / rows[0][1]:.2f}x) |")
        rates = {}
        for _ in range(args.repeats):
            for name, data in (("shards", base), ("in memory", tsv)):
                command = [sys.executable, __file__, "--child", "rate", "--data", str(data)]
                command += ["--rate-steps", str(args.rate_steps)]
                env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
                out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
                if out.returncode != 0:
                    raise SystemExit(f"rate {name} failed:\n{out.stderr[-3000:]}")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                if name not in rates or result["step_seconds"] < rates[name]["step_seconds"]:
                    rates[name] = result
        shards, memory = rates["shards"], rates["in memory"]
        print(f"\nsteps/s (median step, steps 10..{args.rate_steps}, batch 8, unshuffled): shards "
              f"{1 / shards['step_seconds']:.1f}, in memory {1 / memory['step_seconds']:.1f}, "
              f"ratio {memory['step_seconds'] / shards['step_seconds']:.3f}")  # fmt: skip
        for name, result in rates.items():
            rate = result["pipeline_batches_per_second"]
            print(
                f"pipeline alone ({name}): {rate:.0f} batches/s, {rate * result['step_seconds']:.1f}x the steps' demand"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dialogues", type=int, default=20_000)
    parser.add_argument("--tokenizer", default=None, help="default: GPT-2's if the tests cached it, else 'default'")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="runs per contender (the best is shown)")
    parser.add_argument("--finetune", type=int, nargs="+", default=None, metavar="DIALOGUES",
                        help="finetune peak RSS at these corpus sizes, and steps/s (see above)")  # fmt: skip
    parser.add_argument("--rate-steps", type=int, default=60, help="--finetune: steps timed per steps/s run")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.contender = args.child
        print(json.dumps(rate_child(args) if args.child == "rate" else child(args)))
        return
    if args.finetune:
        run_finetune_benchmarks(args)
        return
    args.tokenizer = tokenizer_dir(args.tokenizer)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = scratch / "train.tsv"
        write_tsv(data, args.dialogues)
        print(
            f"{args.dialogues} dialogues, {data.stat().st_size / 2**20:.1f} MiB, tokenizer {args.tokenizer}, "
            f"max_seq_len {args.max_seq_len}, {os.cpu_count()} CPUs"
        )
        contenders = [("encode_dialogues", 1), (ONE_THREAD, 1), ("prepare", 1), ("prepare", 2)]
        results = {}
        for _ in range(args.repeats):  # round-robin, so a slow minute hits every contender
            for contender, workers in contenders:
                result = run_child(args, contender, workers, data, scratch)
                best = results.get((contender, workers))
                if best is None or result["seconds"] < best["seconds"]:
                    results[(contender, workers)] = result
    base, single = (results[(name, 1)]["seconds"] for name in ("encode_dialogues", ONE_THREAD))
    print(
        "\n| contender | seconds | dialogues/s | vs encode_dialogues | vs one thread | CPU seconds |"
        "\n|---|---|---|---|---|---|"
    )
    for (contender, workers), result in results.items():
        name = contender if contender != "prepare" else f"prepare --workers {workers}"
        rate, seconds = args.dialogues / result["seconds"], result["seconds"]
        print(
            f"| {name} | {seconds:.2f} | {rate:,.0f} | {base / seconds:.2f}x | {single / seconds:.2f}x "
            f"| {result['cpu']:.2f} |"
        )
    tf_import = min(r["tf_import"] for r in results.values() if "tf_import" in r)
    print(
        f"\nexamples: {sorted({r['examples'] for r in results.values()})}; "
        f"TensorFlow import (not timed): {tf_import:.1f} s"
    )


if __name__ == "__main__":
    main()
