"""The Chit-Chat Challenge reader (`training/ccc.py`): turns are a sender's consecutive
messages, unreadable conversations are issues naming their id and line, other JSON is refused;
`read_dialogues` and `prepare` take a CCC `.json` file; the real corpus when installed."""

from __future__ import annotations

import json

import pytest

from tfdialogpt.training.ccc import parse_ccc_conversation, read_ccc
from tfdialogpt.training.readers import DataError, read_dialogues


def msg(text, sender="a", **extra):
    return {"text": text, "sender": sender, "timestamp": "2018-05-02T19:38:15Z", **extra}


# One conversation a line (line numbers are the conversation keys' lines), written by hand.
CONVERSATIONS = [
    # line 2: two messages in a run, runs 2 and 3 by the same sender, an empty message in run 4
    (
        "c1",
        {
            "messages": [
                [msg("Hello"), msg("How are  you?")],
                [msg("fine", "b")],
                [msg("and you?", "b")],
                [msg("good"), msg("")],
            ],
            "prompt": "p",
            "ratings": {"witty": 3},
        },
    ),
    ("c2", {"messages": [[msg("anyone there?"), msg("hello?")]]}),  # line 3: one sender only
    ("c3", {"messages": [[{"sender": "a"}], [msg("x", "b")]]}),  # line 4: no "text"
    ("c4", {"messages": [[msg(5)], [msg("x", "b")]]}),  # line 5: text not a string
    ("c5", {"messages": [[msg("hi")], [], [msg("yo", "b")]]}),  # line 6: an empty turn
    ("c6", {"prompt": "no messages here"}),  # line 7
    ("c7", {"messages": [[msg("hi")], [msg("  \n", "b")]]}),  # line 8: a turn of whitespace only
    ("c8", {"messages": [[msg("a b"), msg("c", "b")], [msg("d", "b")]]}),  # line 9: a run with two senders
    ("c9", ["not", "a", "conversation"]),  # line 10
    ("c10", {"messages": [[{"text": "hi"}], [msg("hello", "b")]]}),  # line 11: no "sender"
    ("c11", {"messages": [[msg("Hi!")], [msg("Hello.", "b")], [msg("Bye")]]}),  # line 12
]


def write_ccc(path, conversations=CONVERSATIONS):
    members = [f"{json.dumps(key)}: {json.dumps(value)}" for key, value in conversations]
    path.write_text("{\n" + ",\n".join(members) + "\n}\n")
    return path


def test_turns_are_a_senders_consecutive_messages():
    conversation = {
        "messages": [
            [msg("Hello"), msg(" How are\tyou? ")],
            [msg("fine", "b"), msg("", "b")],
            [msg("thanks", "b")],
            [msg("good")],
        ]
    }
    assert parse_ccc_conversation(conversation) == ["Hello How are you?", "fine thanks", "good"]


def test_reader_keeps_good_conversations_and_reports_the_others_by_id_and_line(tmp_path):
    path = write_ccc(tmp_path / "ccc.json")
    found = read_ccc(path)
    assert [d.turns for d in found.dialogues] == [
        ("Hello How are you?", "fine and you?", "good"),
        ("a b", "c d"),
        ("Hi!", "Hello.", "Bye"),
    ]
    assert [d.weights for d in found.dialogues] == [(1.0, 1.0, 1.0), (1.0, 1.0), (1.0, 1.0, 1.0)]
    assert [d.source for d in found.dialogues] == [
        f"{path}:2: conversation c1",
        f"{path}:9: conversation c8",
        f"{path}:12: conversation c11",
    ]
    assert [(issue.path, issue.line) for issue in found.issues] == [(str(path), n) for n in (3, 4, 5, 6, 7, 8, 10, 11)]
    messages = [issue.message for issue in found.issues]
    assert messages == [
        "conversation c2: 1 turn (one sender only); a dialogue needs 2",
        'conversation c3: turn 1, message 1: "text" must be a string, got None',
        'conversation c4: turn 1, message 1: "text" must be a string, got 5',
        "conversation c5: turn 2 has no text",
        'conversation c6: expected an object with a "messages" list',
        "conversation c7: turn 2 has no text",
        'conversation c9: expected an object with a "messages" list',
        'conversation c10: turn 1, message 1: "sender" must be a string, got None',
    ]
    with pytest.raises(DataError, match="8 malformed lines") as err:
        read_ccc(path, strict=True)
    assert f"{path}:3: conversation c2" in str(err.value) and len(err.value.issues) == 8


def test_one_line_file_with_a_bom_and_an_empty_object(tmp_path):
    path = tmp_path / "one.json"
    text = json.dumps({"x": {"messages": [[msg("Hi")], [msg("Hey", "b")]]}, "y": {"messages": []}})
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    found = read_ccc(path)
    assert [(d.turns, d.source) for d in found.dialogues] == [(("Hi", "Hey"), f"{path}:1: conversation x")]
    assert [str(issue) for issue in found.issues] == [
        f"{path}:1: conversation y: no messages; a dialogue needs 2 turns"
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"c": {"messages": []}', "invalid JSON: expected ',' or '}' at column 23"),
        ('{"c": {"messages": [[]]}, }', "invalid JSON: expected a string key at column 27"),
        ('{"c": {"messages": []}} []', "invalid JSON: extra data after the object at column 25"),
        (
            '{"turns": ["Hi", "Hello"]}\n{"turns": ["a", "b"]}\n',
            ".json:2: invalid JSON: extra data after the object at column 1",
        ),
        ('[{"messages": []}]', "invalid JSON: expected an object at column 1"),
        ('{"vocab_size": 5, "n_layer": {"a": 1}}', 'no conversation with "messages"'),
        ("{}", 'no conversation with "messages"'),
    ],
)
def test_json_that_is_not_ccc_is_refused_whole(tmp_path, text, message):
    path = tmp_path / "other.json"
    path.write_text(text)
    with pytest.raises(DataError, match="cannot read") as err:
        read_ccc(path)
    assert message in str(err.value)


def test_a_file_that_is_not_utf8_is_refused_with_its_line_and_byte(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"c": {"messages": [\n[{"text": "caf\xe9", "sender": "a"}]]}}')
    with pytest.raises(DataError) as err:
        read_ccc(path)
    assert f"{path}:2: invalid UTF-8 at byte 36 of the file (0xe9)" in str(err.value)


def test_read_dialogues_takes_a_ccc_file_and_a_directory_holding_one(tmp_path):
    path = write_ccc(tmp_path / "ccc.json")
    (tmp_path / "more.jsonl").write_text(json.dumps({"turns": ["x", "y"]}) + "\n")
    found = read_dialogues(path)
    assert len(found.dialogues) == 3 and len(found.issues) == 8
    both = read_dialogues(tmp_path)  # sorted by name: ccc.json, more.jsonl
    assert [d.turns for d in both.dialogues][2:] == [("Hi!", "Hello.", "Bye"), ("x", "y")]
    assert len(both.issues) == 8


def test_prepare_takes_a_ccc_file(tmp_path):
    from tfdialogpt.tokenizer import Tokenizer
    from tfdialogpt.training.prepare import prepare
    from tfdialogpt.training.shards import read_prepared

    path = write_ccc(tmp_path / "ccc.json")
    tokenizer = Tokenizer.from_pretrained("default")
    manifest = prepare([path], tmp_path / "prepared", tokenizer, max_seq_len=40, workers=1, progress=False)
    totals = manifest["totals"]
    assert (totals["dialogues"], totals["malformed_lines"], totals["dialogues_without_example"]) == (3, 8, 0)
    assert [entry["line"] for entry in manifest["skipped"]] == [3, 4, 5, 6, 7, 8, 10, 11]
    # each good conversation's turns, each closed by EOS; the first turn (and its EOS) is context
    eos = tokenizer.eos_token_id
    expected = []
    for turns in (["Hello How are you?", "fine and you?", "good"], ["a b", "c d"], ["Hi!", "Hello.", "Bye"]):
        ids = [tokenizer.encode(turn) + [eos] for turn in turns]
        tokens = [t for turn in ids for t in turn]
        expected.append((tokens, [0.0] * (len(ids[0]) - 1) + [1.0] * (len(tokens) - len(ids[0]))))
    got = [(t.numpy().tolist(), w.numpy().tolist()) for t, w in read_prepared(tmp_path / "prepared", tokenizer)]
    assert got == expected


def test_the_chitchat_dataset_package_file():
    chitchat_dataset = pytest.importorskip("chitchat_dataset", reason="chitchat-dataset is not installed")
    from pathlib import Path

    found = read_ccc(Path(chitchat_dataset.__file__).parent / "dataset.json")
    assert len(found.dialogues) + len(found.issues) == 7168
    one_sided = [issue for issue in found.issues if "1 turn (one sender only)" in issue.message]
    assert len(one_sided) == 3150  # counted from the raw JSON: conversations with a single run
    assert len(found.issues) - len(one_sided) < 20
    # 138,737 runs in all conversations (none follows a run by the same sender); the
    # 3,150 single runs and a few skipped conversations are not dialogues.
    turns = sum(len(d.turns) for d in found.dialogues)
    assert 134_000 < turns < 135_587
    first = found.dialogues[0]
    assert first.turns[:2] == ("Hello How are you doing today?", "whats up MD im doing good how are you doing?")
