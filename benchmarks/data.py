"""Data preparation throughput: `prepare` with 1 and 2 workers against `encode_dialogues`.

A DialoGPT-style TSV is generated (turns of 3 to 25 words, 2 to 5 turns, some 0.0 weights);
each contender runs in its own child process, timed from the call to the end (wall clock, and
CPU seconds of the process and its workers):

- `encode_dialogues`: `read_dialogues` + `encode_dialogues` in one process, the examples in
  memory (what `finetune` does today);
- `prepare --workers K`: the same examples written to TFRecord shards + manifest.json.
  TensorFlow is imported before the clock starts (the CLI imports it first too; the import,
  about 4 s here, is printed apart).

    python benchmarks/data.py                       # 20,000 dialogues, GPT-2's tokenizer if cached
    python benchmarks/data.py --dialogues 5000 --tokenizer default --repeats 1
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
    if args.contender == "encode_dialogues":
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


def run_child(args, contender: str, workers: int, data: Path, scratch: Path) -> dict:
    output = scratch / f"out-{contender}-{workers}-{time.monotonic_ns()}"
    command = [sys.executable, __file__, "--child", contender, "--workers", str(workers), "--data", str(data)]
    command += ["--output", str(output), "--tokenizer", args.tokenizer, "--max-seq-len", str(args.max_seq_len)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"{contender} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dialogues", type=int, default=20_000)
    parser.add_argument("--tokenizer", default=None, help="default: GPT-2's if the tests cached it, else 'default'")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="runs per contender (the best is shown)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.contender = args.child
        print(json.dumps(child(args)))
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
        contenders = [("encode_dialogues", 1), ("prepare", 1), ("prepare", 2)]
        results = {}
        for _ in range(args.repeats):  # round-robin, so a slow minute hits every contender
            for contender, workers in contenders:
                result = run_child(args, contender, workers, data, scratch)
                best = results.get((contender, workers))
                if best is None or result["seconds"] < best["seconds"]:
                    results[(contender, workers)] = result
    base = results[("encode_dialogues", 1)]["seconds"]
    print("\n| contender | seconds | dialogues/s | vs encode_dialogues | CPU seconds |\n|---|---|---|---|---|")
    for (contender, workers), result in results.items():
        name = contender if contender == "encode_dialogues" else f"prepare --workers {workers}"
        rate = args.dialogues / result["seconds"]
        ratio = base / result["seconds"]
        print(f"| {name} | {result['seconds']:.2f} | {rate:,.0f} | {ratio:.2f}x | {result['cpu']:.2f} |")
    tf_import = min(r["tf_import"] for r in results.values() if "tf_import" in r)
    print(
        f"\nexamples: {sorted({r['examples'] for r in results.values()})}; "
        f"TensorFlow import (not timed): {tf_import:.1f} s"
    )


if __name__ == "__main__":
    main()
