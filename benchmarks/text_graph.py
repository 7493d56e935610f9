"""Cost of the in-graph tokenizer (`tfdialogpt.text_graph`): encode and decode latency.

Times `TextGraph.encode` on a ~20-word text and `TextGraph.decode` on a 32-token reply, at
batch 1 and 8, each inside a `tf.function` with a `[None]` input signature (as an export runs
them), against `Tokenizer` on the same inputs. Prints the median of many calls.

    python benchmarks/text_graph.py                       # the embedded default vocabulary
    python benchmarks/text_graph.py --tokenizer ~/.cache/tfdialogpt-tests/gpt2-vocab
"""

from __future__ import annotations

import argparse
import statistics
import time

from tfdialogpt._quiet import import_tensorflow

tf = import_tensorflow()  # without TensorFlow's native start-up lines

from tfdialogpt.text_graph import TextGraph  # noqa: E402
from tfdialogpt.tokenizer import Tokenizer  # noqa: E402

TEXT = (
    "Hey there! I just got back from a long trip to Lisbon, and honestly the food "
    "was amazing; what should I cook tonight?"
)


def median_ms(call, repeats: int) -> float:
    call()  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default="default", help="directory or hub id")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)

    tokenizer = Tokenizer.from_pretrained(args.tokenizer)
    start = time.perf_counter()
    graph = TextGraph.from_tokenizer(tokenizer)
    print(f"vocab {tokenizer.vocab_size}: built in {time.perf_counter() - start:.2f} s")
    encode = tf.function(graph.encode, input_signature=[tf.TensorSpec([None], tf.string)])
    decode = tf.function(
        graph.decode,
        input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int64)],
    )
    reply = (tokenizer.encode(TEXT * 3))[:32]
    print(f"text: {len(TEXT.split())} words, {len(tokenizer.encode(TEXT))} tokens; reply 32 ids")
    for batch in (1, 8):
        texts = tf.constant([TEXT] * batch)
        ids = tf.constant([reply] * batch, tf.int32)
        lengths = tf.constant([32] * batch, tf.int64)
        graph_encode = median_ms(lambda: encode(texts), args.repeats)  # noqa: B023
        graph_decode = median_ms(lambda: decode(ids, lengths), args.repeats)  # noqa: B023
        python_encode = median_ms(lambda: tokenizer.encode_batch([TEXT] * batch), args.repeats)  # noqa: B023
        python_decode = median_ms(lambda: [tokenizer.decode(reply) for _ in range(batch)], 50)  # noqa: B023
        print(
            f"batch {batch}: graph encode {graph_encode:.2f} ms, decode {graph_decode:.2f} ms | "
            f"Tokenizer encode {python_encode:.2f} ms, decode {python_decode:.2f} ms"
        )


if __name__ == "__main__":
    main()
