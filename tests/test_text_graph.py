"""Tests for `tfdialogpt.text_graph.TextGraph`: the in-graph tokenizer against `Tokenizer`.

Every expected value comes from `tfdialogpt.tokenizer.Tokenizer` (HF `tokenizers` under it),
never from the graph itself. Both vocabularies are checked: GPT-2's 50,257 tokens (rebuilt
offline as in `test_tokenizer.py`) and the embedded default model's 2,048. Graph calls are
batched, 1,000 strings a call, through `tf.function`s with `[None]` input signatures.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tensorflow as tf
from test_tokenizer import HAND_TEXTS, corpus_lines, gpt2_dir  # noqa: F401 (fixtures)
from tokenizers import models

from tfdialogpt._gpt2_vocab import bytes_to_unicode
from tfdialogpt.text_graph import TextGraph, TextGraphError
from tfdialogpt.tokenizer import Tokenizer

CHUNK = 1000
STRINGS = tf.TensorSpec([None], tf.string)

# fmt: off
WHITESPACE = [
    "\t", "\n", "\x0b", "\x0c", "\r", " ", "\x85", "\xa0", "\u1680", *map(chr, range(0x2000, 0x200B)),
    "\u2028", "\u2029", "\u202f", "\u205f", "\u3000",
    # not White_Space, though some engines call them spaces
    "\u200b", "\ufeff", "\u180e", "\x1c", "\x1f",
]
ATOMS = [
    "hello", "World", "a", "I", "naïve", "café", "Straße", "你好", "世界", "こんにちは", "한국어",
    "مرحبا", "שלום", "नमस्ते", "สวัสดี", "Привет", "Ελλάδα", "'s", "'t", "'re", "'ve", "'m", "'ll",
    "'d", "'S", "'LL", "’s", "'", "''", "0", "7", "42", "2024", "3.14", "٣٤", "½", "x²", "Ⅻ", "🙂",
    "👩‍👩‍👧‍👦", "🇺🇸", "❤️", "👍🏽", "🍕🍕", "e\u0301", "\u0301", "\u20dd", "\x00", "\x01", "\x1b",
    "\x7f", "\u200d", "\u202e", "\u2066", "\ufffd", ".", "!?", "...", "<", "|", "--", "$", "#@",
    "<|endoftext|>", "<|endoftext", "endoftext|>",
]
# fmt: on


def random_code_point(rng: random.Random) -> str:
    """Any scalar value, mostly from the planes where Unicode versions differ (0-3, 14)."""
    while True:
        plane = rng.choice([0, 0, 0, 1, 1, 2, 3, 14, 15])
        point = plane * 0x10000 + rng.randrange(0x10000)
        if not 0xD800 <= point <= 0xDFFF:
            return chr(point)


def hard_strings(count: int, seed: int) -> list[str]:
    """Mixed whitespace runs before words, contractions, digits, emoji, marks, scripts, ..."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.5:
                run = rng.choice([1, 1, 2, 3, 5])
                parts.append("".join(rng.choice([" ", rng.choice(WHITESPACE)]) for _ in range(run)))
            roll = rng.random()
            if roll < 0.65:
                parts.append(rng.choice(ATOMS))
            elif roll < 0.9:
                parts.append("".join(random_code_point(rng) for _ in range(rng.randint(1, 4))))
            else:  # a long single word
                parts.append(rng.choice(["a", "xyz", "中", "🙂", "1", "!"]) * rng.randint(20, 120))
        texts.append("".join(parts))
    return texts


@pytest.fixture(scope="module", params=["gpt2", "default"])
def pair(request) -> tuple[Tokenizer, TextGraph]:
    """`(tokenizer, graph)` for GPT-2's vocabulary, then the default model's."""
    if request.param == "gpt2":
        tokenizer = Tokenizer.from_pretrained(request.getfixturevalue("gpt2_dir"))
    else:
        tokenizer = Tokenizer.from_pretrained("default")
    return tokenizer, TextGraph.from_tokenizer(tokenizer)


def graph_encode(graph: TextGraph, texts: list) -> list[list[int]]:
    encode = tf.function(lambda t: graph.encode(t), input_signature=[STRINGS])
    ids = []
    for start in range(0, len(texts), CHUNK):
        ids += encode(tf.constant(texts[start : start + CHUNK])).to_list()
    return ids


def assert_encodes_like(tokenizer: Tokenizer, graph: TextGraph, texts: list[str]) -> None:
    expected = tokenizer.encode_batch(texts)
    got = graph_encode(graph, [text.encode("utf-8") for text in texts])
    mismatches = [(t, g, e) for t, g, e in zip(texts, got, expected, strict=True) if g != e]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, e.g. {mismatches[:3]}"


# --------------------------------------------------------------------------- encode


def test_encode_hand_texts_and_special_token(pair):
    tokenizer, graph = pair
    eos = tokenizer.eos_token
    texts = HAND_TEXTS + [
        f"Hi!{eos}Hello{eos}", eos, eos * 3, f"a {eos} b", f" {eos}  ", f"x{eos}\n\ny", f"<|{eos}|>",
        "\x00", "a\x00b c", "\x00\x00  \x00", "it's\x00's",
    ]  # fmt: skip
    assert_encodes_like(tokenizer, graph, texts)
    # A literal `<|endoftext|>` is the special id, in the graph as in `Tokenizer`.
    assert graph.encode(tf.constant([eos])).to_list() == [[tokenizer.eos_token_id]]


def test_encode_corpus_lines(pair, corpus_lines):  # noqa: F811
    if not corpus_lines:
        pytest.skip("chatterbot-corpus is not installed")
    assert len(corpus_lines) > 4000
    assert_encodes_like(*pair, corpus_lines)


def test_encode_hard_strings(pair):
    texts = hard_strings(20_000, seed=13)
    # The generator is not degenerate: many runs of whitespace before words.
    assert sum(re.search(r"\s\s\w", text) is not None for text in texts) > 5000
    assert_encodes_like(*pair, texts)


def test_invalid_utf8_is_read_as_replacement_characters(pair):
    tokenizer, graph = pair
    rng = random.Random(5)
    tails = [b"\x80", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xed\xa0\x80", b"\xc0\xaf", b"\xff"]
    data = [bytes(rng.randrange(256) for _ in range(rng.randint(1, 24))) for _ in range(3000)]
    data += [b"ok " + tail + b" and" + tail for tail in tails]
    data += [b"a" + rng.choice(tails) + "é🙂".encode() + rng.choice(tails) for _ in range(500)]
    assert sum(1 for raw in data if b"\xef\xbf\xbd" in raw) < 10  # mostly genuine bad bytes
    expected = tokenizer.encode_batch([raw.decode("utf-8", "replace") for raw in data])
    assert graph_encode(graph, data) == expected


def test_encode_inside_tf_function_with_empty_batch_and_texts(pair):
    _, graph = pair
    encode = tf.function(lambda t: graph.encode(t), input_signature=[STRINGS])
    assert encode(tf.constant([], tf.string)).to_list() == []
    assert encode(tf.constant(["", ""])).to_list() == [[], []]
    assert graph.encode(tf.constant(["x"])).dtype == tf.int32


# --------------------------------------------------------------------------- decode


def token_bytes(tokenizer: Tokenizer, token_id: int) -> bytes:
    table = {char: byte for byte, char in bytes_to_unicode().items()}
    token = tokenizer._tokenizer.id_to_token(token_id)
    return bytes(table[c] for c in token) if all(c in table for c in token) else b""


def random_id_rows(tokenizer: Tokenizer, count: int, seed: int) -> list[list[int]]:
    """Random ids, half of them tokens that are not whole UTF-8 on their own."""
    cut = []
    for token_id in range(tokenizer.vocab_size):
        try:
            token_bytes(tokenizer, token_id).decode("utf-8")
        except UnicodeDecodeError:
            cut.append(token_id)
    assert len(cut) >= 64, "too few cut-character tokens to test with"
    rng = random.Random(seed)
    return [
        [
            rng.choice(cut) if rng.random() < 0.5 else rng.randrange(tokenizer.vocab_size)
            for _ in range(rng.randint(0, 16))
        ]
        for _ in range(count)
    ]


@pytest.mark.parametrize("skip_special_tokens", [False, True])
def test_decode_random_ids(pair, skip_special_tokens):
    tokenizer, graph = pair
    rows = random_id_rows(tokenizer, 20_000, seed=int(skip_special_tokens))
    rows[:3] = [[tokenizer.eos_token_id] * 2, [], tokenizer.encode("🍕")[:1]]
    expected = [tokenizer.decode(row, skip_special_tokens) for row in rows]
    assert sum("\ufffd" in text for text in expected) > 5000  # many cut characters

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int64)])
    def decode(ids, lengths):
        return graph.decode(ids, lengths, skip_special_tokens=skip_special_tokens)

    got = []
    for start in range(0, len(rows), CHUNK):
        ragged = tf.ragged.constant(rows[start : start + CHUNK], dtype=tf.int32, ragged_rank=1)
        dense = ragged.to_tensor(default_value=tokenizer.eos_token_id)
        got += [text.decode("utf-8") for text in decode(dense, ragged.row_lengths()).numpy()]
    mismatches = [(r, g, e) for r, g, e in zip(rows, got, expected, strict=True) if g != e]
    assert not mismatches, f"{len(mismatches)} differ, e.g. {mismatches[:3]}"
    # Ragged input, eager.
    sample = rows[:50]
    ragged = tf.ragged.constant(sample, dtype=tf.int64, ragged_rank=1)
    out = graph.decode(ragged, skip_special_tokens=skip_special_tokens).numpy()
    assert [text.decode("utf-8") for text in out] == expected[:50]


def test_decode_rejects_out_of_range_ids(pair):
    tokenizer, graph = pair
    for bad in (tokenizer.vocab_size, -1):
        with pytest.raises(tf.errors.InvalidArgumentError, match="ids must be in"):
            graph.decode(tf.ragged.constant([[1, bad]]))
    with pytest.raises(ValueError, match="lengths only with dense"):
        graph.decode(tf.ragged.constant([[1]]), lengths=tf.constant([1]))


# --------------------------------------------------------------------------- dialogues


def random_dialogues(texts: list[str], rows: int, slots: int, seed: int):
    """`(turns [rows][slots] padded with "", max_length per row)`, some turns empty."""
    rng = random.Random(seed)
    histories, budgets = [], []
    for _ in range(rows):
        used = rng.randint(1, slots)
        turns = [rng.choice(texts) if rng.random() > 0.1 else "" for _ in range(used)]
        turns[-1] = turns[-1] or "last"
        histories.append(turns + [""] * (slots - used))
        budgets.append(rng.randint(1, 60))
    return histories, budgets


def expected_dialogue(tokenizer: Tokenizer, row: list[str], budget) -> tuple[list[int], bool]:
    used = max(i + 1 for i, turn in enumerate(row) if turn)
    try:
        return tokenizer.encode_dialogue(row[:used], max_length=budget), True
    except ValueError:  # the newest turn alone is too long
        return [], False


def test_encode_dialogue_matches_tokenizer(pair, corpus_lines):  # noqa: F811
    tokenizer, graph = pair
    texts = (corpus_lines or HAND_TEXTS)[:3000] + hard_strings(1000, seed=3)
    histories, budgets = random_dialogues(texts, rows=2000, slots=6, seed=11)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string), tf.TensorSpec([None], tf.int64)])
    def dialogue(turns, max_length):
        return graph.encode_dialogue(turns, max_length, strict=False)

    overflows = 0
    for start in range(0, len(histories), CHUNK):
        rows, row_budgets = histories[start : start + CHUNK], budgets[start : start + CHUNK]
        ids, lengths, fits = dialogue(tf.constant(rows), tf.constant(row_budgets, tf.int64))
        expected = [expected_dialogue(tokenizer, r, b) for r, b in zip(rows, row_budgets, strict=True)]
        assert ids.to_list() == [e[0] for e in expected]
        assert fits.numpy().tolist() == [e[1] for e in expected]
        assert lengths.numpy().tolist() == [len(e[0]) for e in expected]
        overflows += sum(not e[1] for e in expected)
    truncated = sum(
        len(expected_dialogue(tokenizer, r, b)[0]) < len(expected_dialogue(tokenizer, r, None)[0])
        for r, b in zip(histories[:500], budgets[:500], strict=True)
    )
    assert overflows > 20 and truncated > 100  # both paths are exercised
    # No budget, and one scalar budget for all rows.
    rows = histories[:300]
    ids, _, fits = graph.encode_dialogue(tf.constant(rows))
    assert ids.to_list() == [expected_dialogue(tokenizer, row, None)[0] for row in rows]
    assert fits.numpy().all()
    ids, _, _ = graph.encode_dialogue(tf.constant(rows), 40, strict=False)
    assert ids.to_list() == [expected_dialogue(tokenizer, row, 40)[0] for row in rows]


def test_encode_dialogue_errors(pair):
    tokenizer, graph = pair
    long_turn = "this newest turn is far too long for the budget"
    with pytest.raises(tf.errors.InvalidArgumentError, match="newest turn with its EOS"):
        graph.encode_dialogue(tf.constant([["short", long_turn]]), 5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="has no turn"):
        graph.encode_dialogue(tf.constant([["a", ""], ["", ""]]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_length must be positive"):
        graph.encode_dialogue(tf.constant([["a"]]), 0)
    ids, lengths, fits = graph.encode_dialogue(
        tf.constant([["", ""], ["short", long_turn], ["", "hi"]]), 5, strict=False
    )
    assert fits.numpy().tolist() == [False, False, True]
    assert ids.to_list()[:2] == [[], []] and lengths.numpy().tolist()[:2] == [0, 0]
    eos = tokenizer.eos_token_id
    assert ids.to_list()[2] == tokenizer.encode_dialogue(["", "hi"], 5) == [eos] + (tokenizer.encode("hi") + [eos])


# --------------------------------------------------------------------------- building


def test_sentencepiece_merges_only_what_bpe_merges():
    """A vocabulary whose tokens are often not self-stable: SentencePiece's plain BPE would
    join neighbours no merge lists (e.g. `a` + `bc` into `abc` made by `ab` + `c`)."""
    rng = random.Random(7)
    alphabet = bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    pool, merges = ["a", "b", "c", "d", "Ġ"], []
    while len(merges) < 120:
        left, right = rng.choice(pool), rng.choice(pool)
        if len(left + right) <= 6 and left + right not in vocab:
            merges.append((left, right))
            vocab[left + right] = len(vocab)
            pool.append(left + right)
    vocab["<|endoftext|>"] = len(vocab)
    bpe = models.BPE(vocab, merges)
    tokenizer = Tokenizer(bpe)
    unstable = [t for t in pool[5:] if [p.value for p in bpe.tokenize(t)] != [t]]
    assert len(unstable) > 10, "the vocabulary does not exercise the fix"
    texts = ["".join(rng.choices("abcd ", k=rng.randint(1, 30))) for _ in range(3000)]
    assert_encodes_like(tokenizer, TextGraph.from_tokenizer(tokenizer), texts + unstable)


def test_from_tokenizer_rejects_what_it_cannot_reproduce():
    with pytest.raises(TypeError, match="must be a Tokenizer"):
        TextGraph.from_tokenizer("gpt2")
    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    vocab["<|endoftext|>"] = 256
    with pytest.raises(TextGraphError, match="dropout"):
        TextGraph.from_tokenizer(Tokenizer(models.BPE(vocab, [], dropout=0.5)))
    vocab.pop("Ā")  # byte 0
    with pytest.raises(TextGraphError, match="without gaps"):
        TextGraph.from_tokenizer(Tokenizer(models.BPE(vocab, [])))
    vocab = {token: (0 if token_id == 256 else token_id) for token, token_id in vocab.items()}
    with pytest.raises(TextGraphError, match="no token for 1 bytes"):
        TextGraph.from_tokenizer(Tokenizer(models.BPE(vocab, [])))


# --------------------------------------------------------------------------- SavedModel

# Every op the export may hold: TF core ops (which every TF Serving build links) and the two
# SentencePiece ops of TF Text (`tensorflow_text:ops_lib`, linked by stock TF Serving).
ALLOWED_OPS = {
    # graph plumbing and function calls
    "Placeholder", "Const", "Identity", "NoOp", "PartitionedCall", "StatefulPartitionedCall",
    "If", "Assert",
    # checkpoint save / restore that every SavedModel carries
    "SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename", "StringJoin",
    # shapes and indexing
    "Shape", "Size", "Reshape", "ExpandDims", "Squeeze", "Pack", "ConcatV2", "StridedSlice",
    "GatherV2", "Fill", "Range", "Tile", "BroadcastTo", "Transpose", "Where", "Select",
    "SelectV2", "Cast",
    # arithmetic, comparison and reduction
    "AddV2", "Sub", "Mul", "FloorDiv", "Maximum", "Minimum", "Max", "Min", "Prod", "Cumsum",
    "Equal", "NotEqual", "Less", "LessEqual", "Greater", "GreaterEqual", "LogicalAnd", "LogicalOr",
    "All",
    "UnsortedSegmentSum", "DenseBincount",
    # ragged tensors
    "RaggedRange", "RaggedGather", "RaggedTensorToTensor",
    # strings
    "StringSplit", "StringSplitV2", "StaticRegexReplace", "StaticRegexFullMatch", "DecodeRaw",
    "UnicodeEncode", "UnicodeTranscode", "UnsortedSegmentJoin",
    # TF Text
    "SentencepieceOp", "SentencepieceTokenizeOp",
}  # fmt: skip


@pytest.fixture(scope="module")
def gpt2_pair(gpt2_dir):  # noqa: F811
    tokenizer = Tokenizer.from_pretrained(gpt2_dir)
    return tokenizer, TextGraph.from_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def export(gpt2_pair, tmp_path_factory) -> Path:
    """A SavedModel with encode, decode and dialogue signatures over GPT-2's vocabulary."""
    _, graph = gpt2_pair
    module = tf.Module()
    module.text = graph

    def encode(texts):
        ids = graph.encode(texts)
        return {"ids": ids.to_tensor(), "lengths": ids.row_lengths()}

    def decode(ids, lengths):
        return {"text": graph.decode(ids, lengths)}

    def dialogue(turns, max_length, strict):
        ids, lengths, fits = graph.encode_dialogue(turns, max_length, strict=strict)
        return {"ids": ids.to_tensor(), "lengths": lengths, "fits": fits}

    def lenient(turns, max_length):
        return dialogue(turns, max_length, strict=False)

    def strict(turns, max_length):
        return dialogue(turns, max_length, strict=True)

    turns_spec = [tf.TensorSpec([None, None], tf.string), tf.TensorSpec([None], tf.int64)]
    signatures = {
        "encode": tf.function(encode, input_signature=[STRINGS]),
        "decode": tf.function(
            decode,
            input_signature=[
                tf.TensorSpec([None, None], tf.int32),
                tf.TensorSpec([None], tf.int64),
            ],
        ),
        "dialogue": tf.function(lenient, input_signature=turns_spec),
        "dialogue_strict": tf.function(strict, input_signature=turns_spec),
    }
    path = tmp_path_factory.mktemp("text_graph") / "export"
    tf.saved_model.save(module, str(path), signatures=signatures)
    return path


def test_saved_model_ops_are_allowlisted(export):
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((export / "saved_model.pb").read_bytes())
    ops = set()
    for meta_graph in saved.meta_graphs:
        ops |= {node.op for node in meta_graph.graph_def.node}
        for function in meta_graph.graph_def.library.function:
            ops |= {node.op for node in function.node_def}
    assert "SentencepieceTokenizeOp" in ops and "StaticRegexReplace" in ops
    assert ops - ALLOWED_OPS == set()


LOADER = textwrap.dedent(
    """
    import base64, json, sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the SentencePiece ops)

    request = json.load(open(sys.argv[2]))
    model = tf.saved_model.load(sys.argv[1])
    texts = [base64.b64decode(text) for text in request["texts"]]
    encoded = model.signatures["encode"](texts=tf.constant(texts))
    ids = [row[:n] for row, n in zip(encoded["ids"].numpy().tolist(), encoded["lengths"].numpy())]
    rows = tf.ragged.constant(request["rows"], dtype=tf.int32, ragged_rank=1)
    decoded = model.signatures["decode"](ids=rows.to_tensor(), lengths=rows.row_lengths())
    dialogue = model.signatures["dialogue"](
        turns=tf.constant(request["turns"]), max_length=tf.constant(request["budgets"], tf.int64)
    )
    try:
        model.signatures["dialogue_strict"](
            turns=tf.constant([["a", "far too long for the budget"]]),
            max_length=tf.constant([2], tf.int64),
        )
        strict = "no error"
    except tf.errors.InvalidArgumentError as error:
        strict = str(error)
    foreign = [name for name in ("tfdialogpt", "tokenizers", "sentencepiece") if name in sys.modules]
    print(json.dumps({
        "ids": ids,
        "text": [text.decode("utf-8") for text in decoded["text"].numpy()],
        "dialogue": [row[:n] for row, n in zip(dialogue["ids"].numpy().tolist(),
                                               dialogue["lengths"].numpy())],
        "fits": dialogue["fits"].numpy().tolist(),
        "strict": strict,
        "foreign": foreign,
    }))
    """
)


@pytest.mark.slow
def test_saved_model_runs_in_a_fresh_process(export, gpt2_pair, tmp_path):
    tokenizer, _ = gpt2_pair
    texts = [t.encode() for t in HAND_TEXTS + hard_strings(300, seed=21)]
    texts += [b"bad \xff\xfe bytes \xe2\x82", b"\xf0\x9f\x98"]
    rows = random_id_rows(tokenizer, 300, seed=2)
    turns, budgets = random_dialogues(HAND_TEXTS, rows=100, slots=4, seed=4)
    request = {
        "texts": [base64.b64encode(text).decode() for text in texts],
        "rows": rows,
        "turns": turns,
        "budgets": budgets,
    }
    (tmp_path / "request.json").write_text(json.dumps(request))
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(export), str(tmp_path / "request.json")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["foreign"] == []
    assert answer["ids"] == tokenizer.encode_batch([t.decode("utf-8", "replace") for t in texts])
    assert answer["text"] == [tokenizer.decode(row) for row in rows]
    expected = [expected_dialogue(tokenizer, r, b) for r, b in zip(turns, budgets, strict=True)]
    assert answer["dialogue"] == [e[0] for e in expected]
    assert answer["fits"] == [e[1] for e in expected]
    assert "newest turn with its EOS is longer than max_length" in answer["strict"]


def test_module_tracks_its_sentencepiece_resource(gpt2_pair):
    import tensorflow_text as tf_text

    _, graph = gpt2_pair
    assert isinstance(graph, tf.Module)
    assert any(isinstance(m, tf_text.SentencepieceTokenizer) for m in graph.submodules)
