"""Data readers (malformed lines reported by number, nothing else lost), DialoGPT's example
layout, and the tf.data pipeline (buckets, fixed batch size, seeded order, resumable)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfdialogpt.training.examples import Example, build_example
from tfdialogpt.training.pipeline import DialogueBatches
from tfdialogpt.training.readers import (
    DataError,
    parse_tsv_line,
    read_chatterbot_yaml,
    read_dialogues,
    read_jsonl,
    read_tsv,
)

EOS = 9

# ---- readers -------------------------------------------------------------------------------------


def test_tsv_line_weights_follow_dialogpt_prepro():
    turns, weights = parse_tsv_line("0.0 hi there EOS 1.0 how are you ?\t1.0 fine .\n")
    assert turns == ["hi there", "how are you ?", "fine ."]
    assert weights == [0.0, 1.0, 1.0]
    # no weight: 1.0; an integer that starts a reply is text, not a weight
    assert parse_tsv_line("how old are you ?\t20 years old .") == (["how old are you ?", "20 years old ."], [1.0, 1.0])


TSV = (
    "1.0 hello EOS 1.0 hi\t1.0 how are you ?\n"  # 1 ok
    "no tab here\n"  # 2 malformed
    "\n"  # 3 blank: ignored
    "0.0 a EOS 1.0 b\t0.5 c\n"  # 4 ok
    "a\tb\tc\n"  # 5 malformed: two tabs
    "1.0 x\t1.0\n"  # 6 malformed: empty target
    "-1.0 x\t1.0 y\n"  # 7 malformed: negative weight
    "q\tr"  # 8 ok, no final newline
)


def test_tsv_malformed_lines_reported_by_number_and_nothing_else_lost(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text(TSV)
    found = read_tsv(path)
    expected = [(2, str(path)), (5, str(path)), (6, str(path)), (7, str(path))]
    assert [(issue.line, issue.path) for issue in found.issues] == expected
    assert "one TAB" in found.issues[0].message and "turn 2 is empty" in found.issues[2].message
    assert [d.source for d in found.dialogues] == [f"{path}:1", f"{path}:4", f"{path}:8"]
    assert found.dialogues[0].turns == ("hello", "hi", "how are you ?")
    assert found.dialogues[1].weights == (0.0, 1.0, 0.5)
    assert found.dialogues[2].turns == ("q", "r")
    with pytest.raises(DataError, match="4 malformed lines") as err:
        read_tsv(path, strict=True)
    assert f"{path}:2:" in str(err.value) and f"{path}:7:" in str(err.value)
    assert [issue.line for issue in err.value.issues] == [2, 5, 6, 7]


def test_jsonl_reader(tmp_path):
    lines = [
        json.dumps({"turns": ["Hi", "Hello!"]}),
        "{not json",
        json.dumps({"turns": ["only one"]}),
        json.dumps({"turns": ["a", "b"], "weights": [1.0]}),
        json.dumps(["a", "b"]),
        json.dumps({"turns": ["a", "b", "c"], "weights": [0, 0.0, 2.5]}),
        json.dumps({"turns": ["a", ""]}),
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n\n")
    found = read_jsonl(path)
    assert [issue.line for issue in found.issues] == [2, 3, 4, 5, 7]
    assert "invalid JSON" in found.issues[0].message
    assert [d.turns for d in found.dialogues] == [("Hi", "Hello!"), ("a", "b", "c")]
    assert found.dialogues[1].weights == (0.0, 0.0, 2.5)


def test_chatterbot_yaml_reader_keeps_text_verbatim_and_reports_bad_entries(tmp_path):
    path = tmp_path / "corpus.yml"
    path.write_text(
        "categories:\n- greetings\n"
        "conversations:\n"
        "- - Hello\n  - Hi\n"  # line 4
        "- - Do you agree?\n  - yes\n"  # line 6: `yes` stays a string
        # line 8: the shape of chatterbot-corpus 1.3.3's trivia.yml:35
        "- In a game of bingo, which number is two little ducks?\n  - '22'\n"
        "- - lonely\n"  # line 10: one utterance
        "- - Year?\n  - '1984'\n"  # line 11
    )
    found = read_chatterbot_yaml(path)
    assert [(i.line, i.message) for i in found.issues] == [
        (8, "a conversation must be a list of utterances"),
        (10, "a conversation needs at least 2 utterances"),
    ]
    assert [d.turns for d in found.dialogues] == [("Hello", "Hi"), ("Do you agree?", "yes"), ("Year?", "1984")]
    assert [d.source for d in found.dialogues] == [f"{path}:4", f"{path}:6", f"{path}:11"]


def test_a_line_that_is_not_utf8_is_reported_by_file_and_line_and_the_others_kept(tmp_path):
    """One Latin-1 line in a UTF-8 file: that line is an issue like any malformed one."""
    path = tmp_path / "train.tsv"
    path.write_bytes(
        b"hello\thi\n"
        b"\xe9t\xe9\tsummer\n"  # line 2: Latin-1 "été"
        b"0.0 caf\xc3\xa9 EOS 1.0 ok\t1.0 fine .\r\n"  # UTF-8 "café", a CRLF ending
        b"bye\tsee you\n"
    )
    found = read_tsv(path)
    assert [d.turns for d in found.dialogues] == [("hello", "hi"), ("café", "ok", "fine ."), ("bye", "see you")]
    assert [d.source for d in found.dialogues] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    assert [str(issue) for issue in found.issues] == [f"{path}:2: invalid UTF-8 at byte 1 of the line (0xe9)"]
    with pytest.raises(DataError) as err:
        read_tsv(path, strict=True)
    assert str(err.value) == f"{path}: 1 malformed line: {path}:2: invalid UTF-8 at byte 1 of the line (0xe9)"
    assert [(issue.path, issue.line) for issue in err.value.issues] == [(str(path), 2)]
    with pytest.raises(DataError, match="train.tsv:2: invalid UTF-8"):
        read_dialogues(tmp_path, strict=True)  # a directory of files too

    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"turns": ["a", "b"]}\n{"turns": ["caf\xe9", "b"]}\n{"turns": ["c", "d"]}\n')
    found = read_jsonl(path)
    assert [d.turns for d in found.dialogues] == [("a", "b"), ("c", "d")]
    assert [str(issue) for issue in found.issues] == [f"{path}:2: invalid UTF-8 at byte 16 of the line (0xe9)"]
    with pytest.raises(DataError, match=r"train\.jsonl:2: invalid UTF-8 at byte 16"):
        read_jsonl(path, strict=True)

    # YAML: the conversation with an utterance on the line is skipped; a bad line elsewhere
    # (here a category) is reported and loses nothing.
    path = tmp_path / "corpus.yml"
    path.write_bytes(
        b"categories:\n- caf\xe9\n"  # line 2
        b"conversations:\n"
        b"- - Hello\n  - Hi\n"
        b"- - Caf\xe9?\n  - yes\n"  # line 6
        b"- - Bye\n  - See you\n"
    )
    found = read_chatterbot_yaml(path)
    assert [d.turns for d in found.dialogues] == [("Hello", "Hi"), ("Bye", "See you")]
    assert [(issue.line, issue.message) for issue in found.issues] == [
        (2, "invalid UTF-8 at byte 6 of the line (0xe9)"),
        (6, "invalid UTF-8 at byte 8 of the line (0xe9)"),
    ]
    with pytest.raises(DataError, match=r"2 malformed lines: .*corpus\.yml:2: .*corpus\.yml:6: invalid UTF-8"):
        read_chatterbot_yaml(path, strict=True)


def test_a_utf8_byte_order_mark_is_not_text(tmp_path):
    path = tmp_path / "bom.tsv"
    path.write_bytes(b"\xef\xbb\xbf0.0 hello\t1.0 hi\n")
    assert read_tsv(path).dialogues[0].turns == ("hello", "hi")
    assert read_tsv(path).dialogues[0].weights == (0.0, 1.0)
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"turns": ["a", "b"]}\n')
    assert read_jsonl(path).dialogues[0].turns == ("a", "b")


def test_read_dialogues_by_extension_and_directory(tmp_path):
    (tmp_path / "a.tsv").write_text("x\ty\n")
    (tmp_path / "b.jsonl").write_text('{"turns": ["p", "q"]}\n')
    (tmp_path / "notes.txt").write_text("ignored")
    assert read_dialogues(tmp_path / "a.tsv").dialogues[0].turns == ("x", "y")
    assert [d.turns for d in read_dialogues(tmp_path).dialogues] == [("x", "y"), ("p", "q")]
    with pytest.raises(DataError, match="cannot tell the format"):
        read_dialogues(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="does not exist"):
        read_dialogues(tmp_path / "missing.tsv")


def test_readers_and_example_layout_load_no_tensorflow(tmp_path):
    (tmp_path / "a.tsv").write_text("x\ty\n")
    code = (
        "import sys; from tfdialogpt.training import read_dialogues; "
        "from tfdialogpt.training.examples import build_example; "
        f"found = read_dialogues({str(tmp_path / 'a.tsv')!r}); "
        "example, _ = build_example([[1], [2]], [1.0, 1.0], 9, 8); "
        "print(found.dialogues[0].turns, example.tokens.tolist(), "
        "[m for m in ('tensorflow', 'keras') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert out.stdout.strip() == "('x', 'y') [1, 9, 2, 9] []"


# ---- example layout ------------------------------------------------------------------------------


def test_example_layout_matches_dialogpt():
    example, why = build_example([[1, 2], [3], [4, 5]], [1.0, 0.0, 1.0], EOS, 16)
    assert why is None
    assert example.tokens.tolist() == [1, 2, EOS, 3, EOS, 4, 5, EOS]
    # labels are tokens[1:] = 2 EOS 3 EOS 4 5 EOS: the first turn and its EOS are context,
    # the 0.0 turn adds no loss, the reply and its closing EOS carry the weight
    assert example.weights.tolist() == [0, 0, 0, 0, 1, 1, 1]
    example, _ = build_example([[1], [2, 3], [4]], [0.0, 0.5, 2.0], EOS, 16)
    assert example.weights.tolist() == [0, 0.5, 0.5, 0.5, 2.0, 2.0]


def test_trailing_zero_weight_turns_are_dropped():
    example, _ = build_example([[1], [2], [3, 3, 3]], [1.0, 1.0, 0.0], EOS, 16)
    assert example.tokens.tolist() == [1, EOS, 2, EOS]
    assert build_example([[1], [2]], [1.0, 0.0], EOS, 16) == (None, "no turn after the first carries loss")


def test_oldest_turns_dropped_to_fit_max_seq_len():
    turns = [[1, 1, 1], [2, 2], [3], [4, 4]]
    example, _ = build_example(turns, [1.0] * 4, EOS, 6)  # inputs: 2 2 EOS 3 EOS 4 4 = 7 > 6
    assert example.tokens.tolist() == [3, EOS, 4, 4, EOS]
    assert example.weights.tolist() == [0, 1, 1, 1]  # the new first turn is context
    assert example.length <= 6
    example, why = build_example([[1], [2] * 10], [1.0, 1.0], EOS, 8)
    assert example is None and "more than max_seq_len=8" in why


# ---- batches -------------------------------------------------------------------------------------


def _examples(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [
        Example(rng.integers(0, EOS, n + 1).astype(np.int32), rng.random(n).astype(np.float32) + 0.5) for n in lengths
    ]


def _rows(dataset):
    """Every real row of every batch as (input ids, labels, weights) tuples."""
    rows = []
    for inputs, labels, weights in dataset:
        for ids, mask, lab, w in zip(
            inputs["input_ids"].numpy(), inputs["attention_mask"].numpy(), labels.numpy(), weights.numpy(), strict=True
        ):
            n = int(mask.sum())
            if n:
                rows.append((tuple(ids[:n]), tuple(lab[:n]), tuple(np.round(w[:n], 6))))
    return rows


def test_batches_bucketed_fixed_size_shifted_and_complete():
    lengths = [3, 16, 17, 20, 33, 40, 64, 65, 100, 5, 7, 9]
    examples = _examples(lengths)
    batches = DialogueBatches(examples, batch_size=4, pad_token_id=EOS, seed=0)
    assert batches.bucket_lengths == (16, 32, 64, 100)
    shapes = set()
    epoch = list(batches.train_dataset(0))
    assert len(epoch) == batches.batches_per_epoch
    for inputs, labels, weights in epoch:
        shapes.add(tuple(inputs["input_ids"].shape))
        assert labels.shape == weights.shape == inputs["attention_mask"].shape
        # padding carries no weight
        assert np.all(weights.numpy()[inputs["attention_mask"].numpy() == 0] == 0)
    assert shapes <= {(4, 16), (4, 32), (4, 64), (4, 100)}
    expected = sorted((tuple(ex.tokens[:-1]), tuple(ex.tokens[1:]), tuple(np.round(ex.weights, 6))) for ex in examples)
    assert sorted(_rows(epoch)) == expected  # every example exactly once, labels = inputs shifted


def test_order_is_seeded_per_epoch_and_resumable():
    examples = _examples([4] * 10 + [20] * 6, seed=1)
    batches = DialogueBatches(examples, batch_size=2, pad_token_id=EOS, seed=7)
    two_epochs = _rows(batches.train_dataset(0, 2))
    first, second = two_epochs[:16], two_epochs[16:]
    assert first != second and sorted(first) == sorted(second)
    assert _rows(DialogueBatches(examples, 2, EOS, seed=7).train_dataset(0, 2)) == two_epochs
    assert _rows(DialogueBatches(examples, 2, EOS, seed=8).train_dataset(0, 1)) != first
    # a run resumed after 3 batches of epoch 1 sees exactly the rest of the same stream
    resumed = _rows(batches.train_dataset(1, 2, skip_batches=3))
    assert resumed == _rows(batches.train_dataset(1, 2))[6:]
    # evaluation keeps file order within each bucket
    assert [r[0] for r in _rows(batches.eval_dataset())][:10] == [tuple(ex.tokens[:-1]) for ex in examples[:10]]


def test_batches_reject_empty_data():
    with pytest.raises(DataError, match="no training examples"):
        DialogueBatches([], 4, EOS)
