"""`prepare`: shards equal to `encode_dialogues`' examples whatever the workers, the manifest,
resume after a kill, refusal of another run's output, the tokenizer check, the CLI."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tfdialogpt.tokenizer import Tokenizer
from tfdialogpt.training.examples import Example, encode_dialogues
from tfdialogpt.training.prepare import prepare
from tfdialogpt.training.readers import DataError, read_dialogues
from tfdialogpt.training.records import serialize_examples
from tfdialogpt.training.shards import PreparedDataError, TokenizerMismatchError, read_prepared

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
MAX_SEQ_LEN = 40
# Small shards and chunks, so that shards end inside chunks and chunks span shards.
SETTINGS = {"max_seq_len": MAX_SEQ_LEN, "shard_size": 7, "chunk_bytes": 150, "progress": False}
WORDS = "hello hi how are you fine thanks what is your name my name is tiny where do live in a test".split()


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_pretrained("default")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[Path]:
    """A TSV (a BOM, weights, a malformed line, a blank line, CRLF and a lone CR, a dialogue
    too long for MAX_SEQ_LEN), a JSONL with a bad record and a chatterbot YAML file."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("data")

    def turn(n):
        return " ".join(rng.choice(WORDS, n))

    lines = [f"1.0 {turn(3)} EOS 0.0 {turn(2)}\t1.0 {turn(4)}\n" for _ in range(30)]
    lines[4] = "no tab on this line\n"
    lines[9] = "\n"
    lines[12] = f"{turn(2)}\t{turn(3)}\r\n"
    lines[0] = "\ufeff" + lines[0]
    lines[15] = f"{turn(2)}\t{turn(2)}\r{turn(3)}\t{turn(1)}\n"  # one line (split at \\n only): 2 TABs
    lines[20] = f"{turn(30)}\t{turn(30)}\n"  # longer than max_seq_len: no example
    lines[25] = f"0.5 {turn(2)}\t0.0 {turn(2)}\n"  # no turn after the first carries loss
    (root / "a.tsv").write_text("".join(lines), newline="")
    records = [json.dumps({"turns": [turn(2), turn(3), turn(2)], "weights": [1.0, 0.0, 2.0]}) for _ in range(12)]
    records[3] = "{not json"
    (root / "b.jsonl").write_text("\n".join(records) + "\n")
    conversations = "".join(f"- - {turn(2)}\n  - {turn(3)}\n" for _ in range(5))
    (root / "c.yml").write_text("categories:\n- test\nconversations:\n" + conversations + "- - alone\n")
    return [root / "a.tsv", root / "b.jsonl", root / "c.yml"]


def expected(files, tokenizer):
    """What the readers and `encode_dialogues` give for the same files, in order."""
    dialogues, issues = [], []
    for path in files:
        found = read_dialogues(path)
        dialogues += found.dialogues
        issues += found.issues
    return encode_dialogues(dialogues, tokenizer, MAX_SEQ_LEN), issues


def shard_bytes(directory: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted(directory.glob("shard-*.tfrecord"))]


def examples_of(directory, tokenizer) -> list[tuple[list[int], list[float]]]:
    return [(t.numpy().tolist(), w.numpy().tolist()) for t, w in read_prepared(directory, tokenizer)]


@pytest.fixture(scope="module")
def prepared(data, tokenizer, tmp_path_factory) -> Path:
    """The uninterrupted run, one worker."""
    directory = tmp_path_factory.mktemp("prepared") / "out"
    prepare(data, directory, tokenizer, workers=1, **SETTINGS)
    return directory


def test_shards_hold_encode_dialogues_examples_whatever_the_workers(data, tokenizer, prepared, tmp_path):
    encoded, _ = expected(data, tokenizer)
    got = examples_of(prepared, tokenizer)
    assert got == [(ex.tokens.tolist(), ex.weights.tolist()) for ex in encoded.examples]
    assert len(got) == 41 and len(shard_bytes(prepared)) == 6  # 5 shards of 7, then 6
    prepare(data, tmp_path / "two", tokenizer, workers=2, **SETTINGS)
    assert shard_bytes(tmp_path / "two") == shard_bytes(prepared)
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest == json.loads((prepared / "manifest.json").read_text())


def test_manifest_counts_skipped_lines_and_sources(data, tokenizer, prepared):
    encoded, issues = expected(data, tokenizer)
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["format"] == "tfdialogpt.prepared" and manifest["format_version"] == 2
    assert manifest["totals"] == {
        "dialogues": 30 - 3 + 11 + 5,  # TSV: 30 lines - 2 malformed - blank; JSONL; YAML
        "examples": len(encoded.examples),
        "tokens": sum(len(ex.tokens) for ex in encoded.examples),
        "loss_tokens": encoded.num_tokens,
        "malformed_lines": len(issues),
        "dialogues_without_example": len(encoded.skipped),
    }
    assert [s["examples"] for s in manifest["shards"]] == [7] * 5 + [6]
    assert manifest["shards"][0] == {
        "file": "shard-00000.tfrecord",
        "examples": 7,
        "tokens": sum(len(ex.tokens) for ex in encoded.examples[:7]),
        "bytes": (prepared / "shard-00000.tfrecord").stat().st_size,
        "length_counts": sorted(
            [n, [ex.length for ex in encoded.examples[:7]].count(n)] for n in {ex.length for ex in encoded.examples[:7]}
        ),
    }
    every_shard = collections.Counter()
    for shard in manifest["shards"]:
        every_shard.update({length: count for length, count in shard["length_counts"]})
    assert every_shard == collections.Counter(ex.length for ex in encoded.examples)
    malformed = [(str(i.path), i.line, "malformed", i.message) for i in issues]
    without = [(*src.rsplit(":", 1), "no_example", why) for src, why in encoded.skipped]
    without = [(path, int(line), kind, why) for path, line, kind, why in without]
    listed = [(s["file"], s["line"], s["kind"], s["reason"]) for s in manifest["skipped"]]
    assert listed == sorted(malformed + without, key=lambda s: (data.index(Path(s[0])), s[1]))
    assert [s[:2] for s in listed] == [
        (str(data[0]), 5),
        (str(data[0]), 16),
        (str(data[0]), 21),
        (str(data[0]), 26),
        (str(data[1]), 4),
        (str(data[2]), 14),
    ]
    assert manifest["tokenizer"] == {
        "fingerprint": tokenizer.fingerprint(),
        "vocab_size": tokenizer.vocab_size,
        "eos_token_id": tokenizer.eos_token_id,
    }
    assert manifest["max_seq_len"] == MAX_SEQ_LEN
    assert [(s["path"], s["size"]) for s in manifest["sources"]] == [(str(p), p.stat().st_size) for p in data]
    assert all(s["mtime_ns"] == p.stat().st_mtime_ns for s, p in zip(manifest["sources"], data, strict=True))


def test_records_parse_as_tf_train_examples():
    import tensorflow as tf

    tokens = np.array([0, 1, 127, 128, 16383, 16384, 2**21 - 1, 2**21, 2**28, 2**35 - 1])
    examples = [Example(tokens, np.linspace(0, 2, 9).astype(np.float32)), Example(np.array([5, 6]), np.array([0.25]))]
    for example, record in zip(examples, serialize_examples(examples), strict=True):
        parsed = tf.train.Example.FromString(record).features.feature
        assert list(parsed["tokens"].int64_list.value) == example.tokens.tolist()
        assert list(parsed["weights"].float_list.value) == example.weights.astype(np.float32).tolist()
    with pytest.raises(ValueError, match="token ids must be in"):
        serialize_examples([Example(np.array([-1, 2]), np.array([1.0]))])


KILLED_RUN = """
import os, signal, sys, multiprocessing
from tfdialogpt.tokenizer import Tokenizer
from tfdialogpt.training.prepare import prepare

def stop(shard):
    if shard["file"] == "shard-00002.tfrecord":  # killed at once, like `kill -9`
        print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

prepare(sys.argv[1:-1], sys.argv[-1], Tokenizer.from_pretrained("default"), workers=2, on_shard=stop, **{settings})
"""


def test_a_killed_run_resumes_to_the_same_shards(data, tokenizer, prepared, tmp_path):
    out = tmp_path / "out"
    code = textwrap.dedent(KILLED_RUN).replace("{settings}", repr(SETTINGS))
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, data), str(out)], capture_output=True, text=True, env=ENV, timeout=300
    )
    assert proc.returncode == -9, proc.stderr
    progress = json.loads((out / "progress.json").read_text())
    assert [s["file"] for s in progress["shards"]] == [f"shard-0000{i}.tfrecord" for i in range(3)]
    assert progress["position"]["drop"] > 0, "the test should resume inside a chunk"
    assert not (out / "manifest.json").exists()
    # the killed run's workers noticed and left
    workers = [int(pid) for pid in proc.stdout.split()]
    assert len(workers) == 2
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers)
    # what a kill can leave besides: a half-written shard, a complete one not yet recorded
    (out / "shard-00003.tfrecord.tmp").write_bytes(b"half")
    (out / "shard-00004.tfrecord").write_bytes(b"renamed, not recorded")
    manifest = prepare(data, out, tokenizer, workers=1, **SETTINGS)
    assert shard_bytes(out) == shard_bytes(prepared)
    assert manifest == json.loads((prepared / "manifest.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] + [f"shard-0000{i}.tfrecord" for i in range(6)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_another_runs_output_is_refused_unless_overwrite(data, tokenizer, prepared, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in prepared.iterdir()}
    # the same run again: nothing to do
    assert prepare(data, prepared, tokenizer, workers=1, **SETTINGS)["totals"]["examples"] == 41
    assert {p.name: p.stat().st_mtime_ns for p in prepared.iterdir()} == before
    out = tmp_path / "out"
    prepare(data[:1], out, tokenizer, workers=1, **SETTINGS)
    with pytest.raises(FileExistsError, match="holds another prepare run \\(other input files.*--overwrite"):
        prepare(data, out, tokenizer, workers=1, **SETTINGS)
    with pytest.raises(FileExistsError, match="another max_seq_len"):
        prepare(data[:1], out, tokenizer, workers=1, **{**SETTINGS, "max_seq_len": 64})
    prepare(data, out, tokenizer, workers=1, overwrite=True, **SETTINGS)
    assert shard_bytes(out) == shard_bytes(prepared)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds files that no prepare run wrote \\(notes.txt\\)"):
        prepare(data, tmp_path / "mine", tokenizer, overwrite=True, **SETTINGS)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_strict_stops_at_the_first_malformed_line(data, tokenizer, tmp_path):
    with pytest.raises(DataError, match=r"a.tsv: 1 malformed line: .*a.tsv:5: expected `sources<TAB>target`"):
        prepare(data, tmp_path / "out", tokenizer, workers=1, strict=True, **SETTINGS)


def test_undecodable_lines_are_reported_and_skipped(tokenizer, tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"hi\tthere\nbad \xff byte\tx\nhow\tare you\n")
    manifest = prepare(path, tmp_path / "out", tokenizer, workers=1, progress=False)
    assert manifest["totals"]["examples"] == 2
    assert manifest["skipped"] == [
        {
            "file": str(path),
            "line": 2,
            "kind": "malformed",
            "reason": "invalid UTF-8 at byte 5 of the line (0xff)",
        }
    ]


def test_read_prepared_checks_the_tokenizer_and_the_shards(data, tokenizer, prepared, tmp_path):
    from tfdialogpt.training.bpe import train_byte_level_bpe

    other = train_byte_level_bpe(WORDS * 3, 300, tmp_path / "bpe")
    ours, theirs = tokenizer.vocab_size, other.vocab_size
    message = rf"tokenized with another tokenizer .*{ours} ids\) than the one given .*{theirs} ids"
    with pytest.raises(TokenizerMismatchError, match=message):
        read_prepared(prepared, other)
    assert len(read_prepared(prepared, None)) == 41
    # the fingerprint is the tokenizer's, not its files': tokenizer.json gives the same
    tokenizer._tokenizer.save(str(tmp_path / "tokenizer.json"))
    assert Tokenizer.from_pretrained(tmp_path).fingerprint() == tokenizer.fingerprint()
    with pytest.raises(PreparedDataError, match="has no manifest.json"):
        read_prepared(tmp_path, tokenizer)
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in prepared.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    with open(copy / "shard-00001.tfrecord", "r+b") as f:
        f.truncate(10)
    with pytest.raises(PreparedDataError, match="shard-00001.tfrecord has 10 bytes"):
        read_prepared(copy, tokenizer)
    (copy / "manifest.json").rename(copy / "progress.json")
    with pytest.raises(PreparedDataError, match="unfinished prepare run"):
        read_prepared(copy, tokenizer)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "tfdialogpt", "prepare", *args], capture_output=True, text=True, env=ENV, timeout=300
    )


def test_cli_prepare(data, tokenizer, tmp_path):
    out = run_cli(
        "--train", *map(str, data), "--output", str(tmp_path / "out"), "--max-seq-len", "40", "--workers", "2"
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["shards"] == 1 and summary["examples"] == 41 and summary["malformed_lines"] == 4
    assert "skipped 4 malformed lines and 2 dialogues that give no example" in out.stderr
    assert len(examples_of(tmp_path / "out", tokenizer)) == 41
    missing = tmp_path / "missing.tsv"
    out = run_cli("--train", str(missing), "--output", str(tmp_path / "never"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"tfdialogpt prepare: error: data file {missing} does not exist"]
    assert not (tmp_path / "never").exists()


def test_the_skipped_list_is_capped_and_the_counts_kept(tokenizer, tmp_path, monkeypatch):
    import importlib

    # the module (`from tfdialogpt.training import prepare` may give the function of that name)
    prepare_module = importlib.import_module("tfdialogpt.training.prepare")

    monkeypatch.setattr(prepare_module, "MAX_SKIPPED_LISTED", 3)
    path = tmp_path / "noisy.tsv"
    path.write_text("no tab\n" * 5 + "hi\tthere\n")
    manifest = prepare(path, tmp_path / "out", tokenizer, workers=1, progress=False, chunk_bytes=16)
    assert manifest["totals"]["malformed_lines"] == 5 and manifest["totals"]["examples"] == 1
    assert [s["line"] for s in manifest["skipped"]] == [1, 2, 3]
    assert manifest["skipped_listed_max"] == 3
