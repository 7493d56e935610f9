"""Serving benchmark: gRPC Predict under 8 concurrent clients, against in-process generation.

Exports a model (random weights of a DialoGPT shape, or a checkpoint), starts
`python -m tfdialogpt.serving.server` on a free loopback port, then measures:
1. in process: the same exported `generate` signature called directly, one request at a time,
   and `model.generate` (XLA) for reference;
2. one gRPC client, one request at a time: the overhead of gRPC + the server over (1);
3. 8 concurrent clients, each sending a bounded number of requests: throughput, p50/p99
   latency; every answer must equal the single-client answer for the same prompt (greedy);
4. the `chat` signature's cost over `generate` for the same history (in-graph tokenization,
   truncation, detokenization), at batch 1 and 8, for the plain and the XLA signatures;
5. `--only load` (issue 14's figures): one gRPC client at batch 1 on `generate_xla` and
   `generate` against in-process `model.generate` (XLA), interleaved; then 8 concurrent
   clients with mixed prompt lengths and mixed settings (greedy, seeded sampling) against
   in-process batch-8 `model.generate` on the same prompts; every answer checked against
   the same request sent alone.

    python benchmarks/serve.py                       # DialoGPT-small shape, 8 x 4 requests
    python benchmarks/serve.py --preset medium --requests-per-client 2
    python benchmarks/serve.py --only chat           # just (4)
    python benchmarks/serve.py --only load           # just (5)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def percentile(values, q):
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def build_model(args):
    import keras

    from tfdialogpt import DialoGPT, DialoGPTConfig

    if args.model:
        return DialoGPT.from_pretrained(args.model)
    keras.utils.set_random_seed(0)
    return DialoGPT(DialoGPTConfig.preset(args.preset))


def default_tokenizer(args):
    """The tokenizer for the exported model: --tokenizer, the checkpoint's own, or GPT-2's (the
    vocabulary the tests build offline, see tests/test_tokenizer.py)."""
    from tfdialogpt import Tokenizer

    if args.tokenizer or args.model:
        return Tokenizer.from_pretrained(args.tokenizer or args.model)
    from test_tokenizer import CACHE_DIR

    if not (CACHE_DIR / "vocab.json").is_file():
        raise SystemExit(f"no GPT-2 vocabulary at {CACHE_DIR}: run the tokenizer tests once, or pass --tokenizer")
    return Tokenizer.from_pretrained(CACHE_DIR)


CHAT_HISTORY = [
    "Hi! I just got back from a trip to the mountains.",
    "Oh nice, how was it? Did you do any hiking?",
    "Yes, we hiked up to a lake every morning. Do you like the outdoors?",
]


def chat_overhead(loaded, tokenizer, config, new: int, repeats: int, batches=(1, 8)) -> list[tuple]:
    """p50 of `chat` against `generate` on the same history (and their XLA twins), interleaved.

    Both decode exactly `new` tokens from the same left-padded prompt (`generate` gets the ids
    the chat signature builds itself), so the difference is tokenize + truncate + detokenize.
    """
    import tensorflow as tf

    from tfdialogpt import padding
    from tfdialogpt.serving.signatures import PARAMETERS

    settings = {p.name: tf.constant(p.array(), p.spec.np_dtype) for p in PARAMETERS.values()}  # [1]: all rows
    settings["max_new_tokens"] = tf.constant([new], tf.int32)
    rows = []
    for batch in batches:
        turns = tf.constant([CHAT_HISTORY] * batch)
        prompt = tokenizer.encode_dialogue(CHAT_HISTORY, max_length=config.max_positions - new)
        width = padding.padded_length(len(prompt), new, config.max_positions)
        ids, mask = padding.left_pad([prompt] * batch, config.eos_token_id, width)
        for suffix in ("", "_xla"):
            generate, chat = loaded.signatures["generate" + suffix], loaded.signatures["chat" + suffix]
            inputs = {"input_ids": tf.constant(ids), "attention_mask": tf.constant(mask), **settings}
            for _ in range(2):  # warm up both
                expected = generate(**inputs)["sequences"].numpy()
                got = chat(turns=turns, **settings)
            assert (got["sequences"].numpy() == expected).all(), "chat and generate must decode the same tokens"
            times = {"generate": [], "chat": []}
            for _ in range(repeats):
                t = time.perf_counter()
                generate(**inputs)["sequences"].numpy()
                times["generate"].append(time.perf_counter() - t)
                t = time.perf_counter()
                chat(turns=turns, **settings)["reply"].numpy()
                times["chat"].append(time.perf_counter() - t)
            g, c = percentile(times["generate"], 50), percentile(times["chat"], 50)
            rows.append((batch, suffix, len(prompt), int(got["lengths"].numpy().min()), g, c))
    return rows


def print_chat_overhead(rows, new: int) -> None:
    print(f"\n### `chat` over `generate`, same history, {new} new tokens, p50 of interleaved calls\n")
    print("| batch | signatures | prompt tokens | reply tokens (min) | generate ms | chat ms | chat cost |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for batch, suffix, prompt, reply, g, c in rows:
        print(
            f"| {batch} | `chat{suffix}` vs `generate{suffix}` | {prompt} | {reply} | {g:.1f} | {c:.1f} | "
            f"{(c - g) / g * 100:+.1f}% ({c - g:+.1f} ms) |"
        )


def prompts(count, vocab_size, seed=0):
    rng = np.random.default_rng(seed)
    # Histories of 10..30 tokens ending with EOS: two prompt buckets (16 and 32).
    return [rng.integers(0, vocab_size - 1, rng.integers(10, 31)).tolist() + [vocab_size - 1] for _ in range(count)]


def _mixed_settings(i: int) -> dict:
    """Request i of the load benchmark: every other one sampled with its own seed."""
    return {"do_sample": True, "seed": 1000 + i, "top_k": 40, "temperature": 0.9} if i % 2 else {}


def load_benchmark(args, model, result, workdir) -> int:
    """(5): batch-1 latency over gRPC against in-process, then 8 mixed concurrent clients."""
    import tensorflow as tf
    from serving_utils import ServerProcess

    from tfdialogpt.serving.client import Client

    config, new, rounds = model.config, args.max_new_tokens, args.requests_per_client
    work = prompts(args.clients * rounds, config.vocab_size, seed=1)
    server = ServerProcess(
        workdir / "dialogpt",
        workdir / "server.log",
        "--max-batch-size",
        str(args.max_batch_size),
        "--num-batch-threads",
        str(args.num_batch_threads),
    )
    try:
        server.wait_for_version(result.version, timeout=600)

        def client(signature):
            return Client(
                server.target,
                "dialogpt",
                signature=signature,
                timeout=600,
                max_positions=config.max_positions,
                eos_token_id=config.eos_token_id,
            )

        # Compile every (rows, prompt bucket) the runs below can use, on both sides.
        with client("generate_xla") as c:
            for rows in (1, 2, 4, 8):
                for length in (12, 30):
                    c.generate([work[0][:length] + [config.eos_token_id]] * rows, max_new_tokens=new)
        for length in (12, 30):
            model.generate(np.array([work[0][:length]], np.int32), max_new_tokens=new)
        by_bucket = {}
        for prompt in work:
            by_bucket.setdefault(len(prompt) > 16, []).append(prompt)
        batches = [rows[i : i + args.clients] for rows in by_bucket.values() for i in range(0, len(rows), args.clients)]
        for rows in batches[:2]:
            model.generate(*_left_padded(rows, config.eos_token_id), max_new_tokens=new)

        # Batch 1, greedy, interleaved request by request.
        timings = {"in process": [], "gRPC generate_xla": [], "gRPC generate": []}
        with client("generate_xla") as xla, client("generate") as plain:
            plain.generate([work[0]], max_new_tokens=new)
            for prompt in work[: args.clients * 2]:
                for name, call in (
                    ("in process", lambda p=prompt: model.generate(np.array([p], np.int32), max_new_tokens=new)),
                    ("gRPC generate_xla", lambda p=prompt: xla.generate([p], max_new_tokens=new)),
                    ("gRPC generate", lambda p=prompt: plain.generate([p], max_new_tokens=new)),
                ):
                    t = time.perf_counter()
                    call()
                    timings[name].append(time.perf_counter() - t)

        # 8 concurrent clients, mixed lengths and settings, against in-process batches of 8.
        with client("generate_xla") as c:
            alone = [c.generate([p], max_new_tokens=new, **_mixed_settings(i)) for i, p in enumerate(work)]
        alone = [a.sequences[0, : a.lengths[0]].tolist() for a in alone]

        def worker(index):
            answers = {}
            with client("generate_xla") as c:
                for i in range(index, len(work), args.clients):
                    out = c.generate([work[i]], max_new_tokens=new, **_mixed_settings(i))
                    answers[i] = out.sequences[0, : out.lengths[0]].tolist()
            return answers

        served_tok_s, local_tok_s, mismatches = [], [], 0
        for _ in range(3):  # interleaved rounds: load from elsewhere hits both alike
            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                answers = {i: a for chunk in pool.map(worker, range(args.clients)) for i, a in chunk.items()}
            wall = time.perf_counter() - t
            served_tok_s.append(sum(len(a) for a in answers.values()) / wall)
            mismatches += sum(answers[i] != alone[i] for i in range(len(work)))
            t, tokens = time.perf_counter(), 0
            for rows in batches:
                out = model.generate(*_left_padded(rows, config.eos_token_id), max_new_tokens=new)
                tokens += int(np.asarray(out.lengths).sum())
            local_tok_s.append(tokens / (time.perf_counter() - t))
    finally:
        server.terminate()

    print(f"\n## Serving under load ({platform.machine()}, {os.cpu_count()} CPUs, TensorFlow {tf.__version__})\n")
    print(
        f"model: {args.model or 'DialoGPT-' + args.preset + ' shape, random weights'}; prompts of 11-31 tokens; "
        f"{new} new tokens; server --max-batch-size {args.max_batch_size} "
        f"--num-batch-threads {args.num_batch_threads}\n"
    )
    base = percentile(timings["in process"], 50)
    print("| batch 1, greedy | requests | p50 ms | ratio to in-process |")
    print("|---|---:|---:|---:|")
    for name, values in timings.items():
        print(f"| {name} | {len(values)} | {percentile(values, 50):.1f} | {percentile(values, 50) / base:.2f}x |")
    served, local = float(np.median(served_tok_s)), float(np.median(local_tok_s))
    print(
        f"\n{args.clients} concurrent clients, mixed lengths, every other request sampled (own seed): "
        f"{served:.1f} tok/s; in-process batch-{args.clients} `model.generate` (greedy, same prompts): "
        f"{local:.1f} tok/s; ratio {served / local:.2f}x (median of 3 interleaved rounds)"
    )
    print(f"answers equal to the same request sent alone: {3 * len(work) - mismatches}/{3 * len(work)}")
    return 0 if mismatches == 0 else 1


def _left_padded(rows, pad_id):
    from tfdialogpt import padding

    return padding.left_pad(rows, pad_id)  # (input_ids, attention_mask)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--model", help="a checkpoint directory or hub id instead of random weights")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--signature", default="generate", choices=["generate", "generate_xla"])
    parser.add_argument("--max-batch-size", type=int, default=8, help="server-side merging (1 = queue only)")
    parser.add_argument("--num-batch-threads", type=int, default=2, help="the server's runs in parallel")
    parser.add_argument("--tokenizer", help="the model's tokenizer (default: the checkpoint's, or GPT-2's)")
    parser.add_argument("--only", choices=["chat", "load"], help="run only the chat or the load measurement")
    parser.add_argument("--chat-new-tokens", type=int, default=32)
    parser.add_argument("--chat-repeats", type=int, default=15)
    args = parser.parse_args(argv)

    import tensorflow as tf
    from serving_utils import ServerProcess

    from tfdialogpt.serving.client import Client
    from tfdialogpt.serving.export import export

    model = build_model(args)
    config = model.config
    workdir = Path(tempfile.mkdtemp(prefix="tfdialogpt-serve-bench-"))
    try:
        started = time.perf_counter()
        result = export(
            model,
            workdir / "dialogpt",
            max_new_tokens_cap=max(args.max_new_tokens, args.chat_new_tokens, 16),
            warmup_prompt_lengths=(16, 32),
            tokenizer=default_tokenizer(args),
        )
        export_seconds = time.perf_counter() - started
        if args.only == "chat":
            loaded = tf.saved_model.load(result.path)
            rows = chat_overhead(loaded, default_tokenizer(args), config, args.chat_new_tokens, args.chat_repeats)
            print(f"\n## Chat signature ({platform.machine()}, {os.cpu_count()} CPUs, TensorFlow {tf.__version__})")
            print(f"model: {args.model or 'DialoGPT-' + args.preset + ' shape, random weights'}")
            print_chat_overhead(rows, args.chat_new_tokens)
            return 0
        if args.only == "load":
            return load_benchmark(args, model, result, workdir)
        total = args.clients * args.requests_per_client
        work = prompts(total, config.vocab_size)
        new = args.max_new_tokens

        # 1. In process: the exported signature itself, then model.generate (XLA).
        from tfdialogpt.serving.signatures import PARAMETERS, padded_length

        loaded = tf.saved_model.load(result.path)
        signature = loaded.signatures[args.signature]

        def in_process(prompt):
            width = padded_length(len(prompt), new, config.max_positions)
            ids = np.full((1, width), config.eos_token_id, np.int32)
            mask = np.zeros_like(ids)
            ids[0, width - len(prompt) :], mask[0, width - len(prompt) :] = prompt, 1
            params = {p.name: tf.constant(p.array(), p.spec.dtype) for p in PARAMETERS.values()}  # [1]: all rows
            params["max_new_tokens"] = tf.constant([new], tf.int32)
            return signature(input_ids=tf.constant(ids), attention_mask=tf.constant(mask), **params)[
                "sequences"
            ].numpy()

        # Warm every path on both prompt buckets before timing anything.
        short = min(work, key=len)
        long = max(work, key=len)
        for prompt in (short, long):
            in_process(prompt)
            model.generate(np.array([prompt], np.int32), max_new_tokens=new)

        server = ServerProcess(
            workdir / "dialogpt", workdir / "server.log", "--max-batch-size", str(args.max_batch_size)
        )
        try:
            server.wait_for_version(result.version, timeout=600)

            def client():
                return Client(
                    server.target,
                    "dialogpt",
                    signature=args.signature,
                    timeout=600,
                    max_positions=config.max_positions,
                    eos_token_id=config.eos_token_id,
                )

            # 1. and 2., interleaved request by request so that load from elsewhere on the
            # machine hits both alike.
            local, eager_xla, remote, single = [], [], [], {}
            with client() as c:
                for prompt in (short, long):
                    c.generate([prompt], max_new_tokens=new)
                for i, prompt in enumerate(work):
                    t = time.perf_counter()
                    single[i] = c.generate([prompt], max_new_tokens=new).sequences[0].tolist()
                    remote.append(time.perf_counter() - t)
                    if i < 16:
                        t = time.perf_counter()
                        in_process(prompt)
                        local.append(time.perf_counter() - t)
                        t = time.perf_counter()
                        model.generate(np.array([prompt], np.int32), max_new_tokens=new)
                        eager_xla.append(time.perf_counter() - t)

            # The fixed cost of a request, on a call that does almost nothing: `score` of one
            # 16-token row, in process and over gRPC, interleaved.
            ids = np.array([work[0][:15] + [config.eos_token_id]], np.int32)
            target = np.zeros_like(ids)
            target[0, -1] = 1
            score_fn = loaded.signatures["score"]
            score_local, score_remote = [], []
            with client() as c:
                for _ in range(3):
                    score_fn(input_ids=ids, attention_mask=np.ones_like(ids), target_mask=target)
                    c.predict("score", {"input_ids": ids, "attention_mask": np.ones_like(ids), "target_mask": target})
                for _ in range(30):
                    t = time.perf_counter()
                    score_fn(input_ids=ids, attention_mask=np.ones_like(ids), target_mask=target)
                    score_local.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    c.predict("score", {"input_ids": ids, "attention_mask": np.ones_like(ids), "target_mask": target})
                    score_remote.append(time.perf_counter() - t)

            def worker(index):
                latencies, answers = [], {}
                with client() as c:
                    for i in range(index, total, args.clients):
                        t = time.perf_counter()
                        answers[i] = c.generate([work[i]], max_new_tokens=new).sequences[0].tolist()
                        latencies.append(time.perf_counter() - t)
                return latencies, answers

            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                results = list(pool.map(worker, range(args.clients), timeout=3600))
            wall = time.perf_counter() - t
        finally:
            server.terminate()
        latencies = [x for lat, _ in results for x in lat]
        answers = {i: a for _, ans in results for i, a in ans.items()}
        mismatches = sum(answers[i] != single[i] for i in range(total))

        overhead = percentile(remote[: len(local)], 50) - percentile(local, 50)
        print(f"\n## Serving benchmark ({platform.machine()}, {os.cpu_count()} CPUs, TensorFlow {tf.__version__})\n")
        print(
            f"model: {args.model or 'DialoGPT-' + args.preset + ' shape, random weights'} "
            f"({config.num_parameters / 1e6:.0f}M parameters); signature `{args.signature}`; greedy; "
            f"prompts of 11-31 tokens (buckets 16/32); {new} new tokens; export took {export_seconds:.1f} s\n"
        )
        print("| measurement | requests | p50 ms | p99 ms | throughput |")
        print("|---|---:|---:|---:|---:|")
        print(
            f"| in process, exported signature, 1 at a time | {len(local)} | {percentile(local, 50):.1f} | "
            f"{percentile(local, 99):.1f} | {len(local) / sum(local):.2f} req/s |"
        )
        print(
            f"| in process, `model.generate` (XLA), 1 at a time | {len(eager_xla)} | {percentile(eager_xla, 50):.1f} | "
            f"{percentile(eager_xla, 99):.1f} | {len(eager_xla) / sum(eager_xla):.2f} req/s |"
        )
        print(
            f"| gRPC, 1 client, 1 at a time | {len(remote)} | {percentile(remote, 50):.1f} | "
            f"{percentile(remote, 99):.1f} | {len(remote) / sum(remote):.2f} req/s |"
        )
        print(
            f"| gRPC, {args.clients} concurrent clients | {len(latencies)} | {percentile(latencies, 50):.1f} | "
            f"{percentile(latencies, 99):.1f} | {total / wall:.2f} req/s, {total * new / wall:.1f} tok/s |"
        )
        print(
            f"| `score`, 1 row of 16 tokens, in process | {len(score_local)} | {percentile(score_local, 50):.1f} | "
            f"{percentile(score_local, 99):.1f} | |"
        )
        print(
            f"| `score`, 1 row of 16 tokens, gRPC | {len(score_remote)} | {percentile(score_remote, 50):.1f} | "
            f"{percentile(score_remote, 99):.1f} | |"
        )
        fixed = percentile(score_remote, 50) - percentile(score_local, 50)
        print(
            f"\ngRPC + server overhead, fixed cost a request (p50 of `score`, gRPC - in process): {fixed:.1f} ms; "
            f"on a generate request (p50, gRPC - in process): {overhead:.1f} ms "
            f"({overhead / percentile(local, 50) * 100:+.1f}% of {percentile(local, 50):.0f} ms)."
        )
        print(f"answered: {len(answers)}/{total}; equal to single-client answers: {total - mismatches}/{total}")
        print_chat_overhead(
            chat_overhead(loaded, default_tokenizer(args), config, args.chat_new_tokens, args.chat_repeats),
            args.chat_new_tokens,
        )
        return 0 if mismatches == 0 and len(answers) == total else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    from tfdialogpt._quiet import import_tensorflow

    import_tensorflow()  # first, so no later import prints TensorFlow's native start-up lines
    sys.exit(main())
