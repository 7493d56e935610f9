"""`finetune` on prepared shards, streamed: batches equal to the in-memory path's, seeded
epochs that cover every example once, batch counts from the manifest, shards split by
worker, `max_steps`, the tokenizer check, resume after SIGKILL."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest
from test_training import (
    _finish,
    _free_ports,
    _job,
    _kill_mid_epoch,
    _launch,
    _resume_to_the_same_weights,
    _weights,
    tiny_config,
)

from tfdialogpt.training import PreparedBatches, TokenizerMismatchError, finetune
from tfdialogpt.training.bpe import train_byte_level_bpe
from tfdialogpt.training.examples import encode_dialogues
from tfdialogpt.training.fit import fit_runs
from tfdialogpt.training.pipeline import DialogueBatches, num_batches
from tfdialogpt.training.prepare import prepare
from tfdialogpt.training.readers import read_dialogues

WORDS = "hello hi how are you fine thanks what is your name my name is tiny where do live in a test".split()
MAX_SEQ_LEN = 64
QUICK = {"verbose": 0, "jit_compile": False}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """30 dialogues of 2-4 turns (lengths across three buckets), a tokenizer, a tiny model."""
    import keras

    from tfdialogpt import DialoGPT

    root = tmp_path_factory.mktemp("streaming")
    rng = np.random.default_rng(0)
    dialogues = [
        [" ".join(rng.choice(WORDS, rng.integers(1, 9))) for _ in range(rng.integers(2, 5))] for _ in range(30)
    ]
    tokenizer = train_byte_level_bpe(WORDS * 5, 300, root / "bpe")
    keras.utils.set_random_seed(3)
    DialoGPT(tiny_config(tokenizer)).save_pretrained(root / "model", tokenizer=tokenizer)
    train = root / "train.jsonl"
    train.write_text("".join(json.dumps({"turns": d}) + "\n" for d in dialogues))
    prepare(train, root / "prepared", tokenizer, max_seq_len=MAX_SEQ_LEN, shard_size=4, workers=1, progress=False)
    examples = encode_dialogues(read_dialogues(train).dialogues, tokenizer, MAX_SEQ_LEN).examples
    return {"root": root, "train": train, "prepared": root / "prepared", "model": root / "model", "tok": tokenizer,
            "examples": examples}  # fmt: skip


def _batches(ds):
    return [(x["input_ids"].numpy(), x["attention_mask"].numpy(), y.numpy(), w.numpy()) for x, y, w in ds]


def _rows(batches):
    """The examples in `batches`, in order: (tokens without the last, weights) of each row
    with any weight."""
    rows = []
    for ids, mask, labels, weights in batches:
        for r in range(len(ids)):
            if weights[r].any():
                n = int(mask[r].sum())
                rows.append((tuple(ids[r, :n]) + (labels[r, n - 1],), tuple(weights[r, :n])))
    return rows


def _as_rows(examples):
    return [(tuple(ex.tokens.tolist()), tuple(ex.weights.tolist())) for ex in examples]


def test_unshuffled_shards_give_the_in_memory_batches(corpus):
    examples = corpus["examples"]
    in_memory = DialogueBatches(examples, 4, corpus["tok"].eos_token_id, shuffle=False)
    streamed = PreparedBatches(corpus["prepared"], corpus["tok"], 4, corpus["tok"].eos_token_id, shuffle_buffer=0)
    assert len(streamed.paths) == 8 and streamed.num_examples == len(examples) == 30
    buckets = (16, 32, max(ex.length for ex in examples))
    assert streamed.bucket_lengths == in_memory.bucket_lengths == buckets
    assert streamed.batches_per_epoch == in_memory.batches_per_epoch == num_batches(examples, 4, buckets)
    expected, got = _batches(in_memory.train_dataset(0)), _batches(streamed.train_dataset(0))
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


def test_one_step_from_shards_has_the_in_memory_loss_and_update(corpus):
    settings = {**QUICK, "batch_size": 4, "epochs": 1, "max_steps": 1, "shuffle_buffer": 0, "learning_rate": 1e-2}
    dialogues = [d.turns for d in read_dialogues(corpus["train"]).dialogues]
    in_memory = finetune(str(corpus["model"]), dialogues, **settings)
    streamed = finetune(str(corpus["model"]), str(corpus["prepared"]), **settings)
    assert int(streamed.model.optimizer.iterations.numpy()) == 1
    np.testing.assert_allclose(streamed.history["loss"], in_memory.history["loss"], rtol=0, atol=1e-6)
    for a, b in zip(in_memory.model.weights, streamed.model.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6)


def test_a_streamed_epoch_is_a_seeded_shuffle_of_every_example_once(corpus):
    tok = corpus["tok"]
    expected = collections.Counter(_as_rows(corpus["examples"]))

    def epoch(seed, e, skip=0):
        batches = PreparedBatches(corpus["prepared"], tok, 4, tok.eos_token_id, seed=seed, shuffle_buffer=8)
        return _batches(batches.train_dataset(e, e + 1, skip)), batches

    first, batches = epoch(0, 0)
    assert len(first) == batches.batches_per_epoch
    assert {b[0].shape[0] for b in first} == {4} and {b[0].shape[1] for b in first} <= set(batches.bucket_lengths)
    assert collections.Counter(_rows(first)) == expected
    assert _rows(first) != _as_rows(corpus["examples"])  # shuffled
    assert _rows(epoch(0, 0)[0]) == _rows(first)  # a pure function of (seed, epoch)
    assert _rows(epoch(0, 1)[0]) != _rows(first) and _rows(epoch(1, 0)[0]) != _rows(first)
    assert _rows(epoch(0, 0, skip=3)[0]) == _rows(first[3:])  # resuming skips what was done
    two = _batches(batches.train_dataset(0, 2, limit=batches.batches_per_epoch + 2))
    assert _rows(two) == _rows(first) + _rows(epoch(0, 1)[0][:2])


def test_workers_read_disjoint_shards_and_together_all_once(corpus):
    import tensorflow as tf

    tok = corpus["tok"]
    batches = PreparedBatches(corpus["prepared"], tok, 4, tok.eos_token_id, shuffle_buffer=8, num_pipelines=2)
    per_worker = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2)
        got = _batches(batches.train_dataset(0)(context))
        assert len(got) == batches.batches_per_epoch and {b[0].shape[0] for b in got} == {2}
        per_worker.append(collections.Counter(_rows(got)))
    shards = [corpus["examples"][i : i + 4] for i in range(0, 30, 4)]  # shard_size 4, in order
    for worker in range(2):
        mine = [ex for shard in shards[worker::2] for ex in shard]
        assert per_worker[worker] == collections.Counter(_as_rows(mine))
    assert per_worker[0] + per_worker[1] == collections.Counter(_as_rows(corpus["examples"]))


def test_fit_runs_split_at_a_resumed_batch_and_at_max_steps():
    assert fit_runs(10, 3, 0, 0, 30) == [(0, 3, 0, 10)]
    assert fit_runs(10, 3, 0, 4, 30) == [(0, 1, 4, 6), (1, 3, 0, 10)]
    assert fit_runs(10, 3, 0, 4, 25) == [(0, 1, 4, 6), (1, 2, 0, 10), (2, 3, 0, 5)]
    assert fit_runs(10, 3, 0, 0, 7) == [(0, 1, 0, 7)]
    assert fit_runs(10, 3, 1, 2, 15) == [(1, 2, 2, 3)]
    assert fit_runs(10, 3, 2, 0, 20) == []  # killed after its last batch


def test_max_steps_stops_after_that_many_updates_and_saves(corpus, tmp_path):
    result = finetune(
        str(corpus["model"]), str(corpus["prepared"]), output_dir=tmp_path / "out", epochs=5, batch_size=4,
        max_steps=11, **QUICK,
    )  # fmt: skip
    per_epoch = num_batches(corpus["examples"], 4, (16, 32, max(ex.length for ex in corpus["examples"])))
    assert 5 < per_epoch < 11
    assert int(result.model.optimizer.iterations.numpy()) == 11
    assert len(result.history["loss"]) == 2  # one whole epoch, then the first batches of the second
    report = json.loads((tmp_path / "out" / "training_report.json").read_text())
    assert report["settings"]["max_steps"] == 11 and report["train_examples"] == 30
    assert report["train_data"] == str(corpus["prepared"])


def test_another_tokenizer_is_refused_in_python_and_on_the_cli(corpus, tmp_path, capsys):
    from tfdialogpt.cli import main
    from tfdialogpt.tokenizer import Tokenizer

    other = tmp_path / "other"
    prepare(corpus["train"], other, Tokenizer.from_pretrained("default"), max_seq_len=MAX_SEQ_LEN, progress=False)
    with pytest.raises(TokenizerMismatchError, match="another tokenizer"):
        finetune(str(corpus["model"]), str(other), **QUICK)
    code = main(["finetune", "--model", str(corpus["model"]), "--train", str(other), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "another tokenizer" in err, err
    assert not (tmp_path / "o" / "tf_model.h5").exists()


@pytest.mark.parametrize("flag", [["--max-steps", "0"], ["--shuffle-buffer", "-1"]])
def test_cli_refuses_bad_max_steps_and_shuffle_buffer(corpus, tmp_path, capsys, flag):
    from tfdialogpt.cli import main

    code = main(["finetune", "--train", str(corpus["prepared"]), "--output", str(tmp_path / "o"), *flag])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and flag[0][2:].replace("-", "_") in err, err


def _turns(corpus):
    return [d.turns for d in read_dialogues(corpus["train"]).dialogues]


def test_streamed_files_are_prepared_in_the_output_then_trained_as_shards(corpus, tmp_path):
    # Unshuffled: the fixture's shards are of 4 examples, the streamed copy's of 100,000.
    settings = {**QUICK, "batch_size": 4, "epochs": 1, "max_steps": 3, "learning_rate": 1e-2, "max_seq_len": 64,
                "shuffle_buffer": 0}  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    (out / "prepared").mkdir()  # what a run killed while preparing leaves: it is resumed, not refused
    streamed = finetune(str(corpus["model"]), corpus["train"], output_dir=out, stream_files=True, **settings)
    from_shards = finetune(str(corpus["model"]), str(corpus["prepared"]), **settings)
    for a, b in zip(from_shards.model.weights, streamed.model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not (out / "prepared").exists() and (out / "tf_model.h5").is_file()
    assert json.loads((out / "training_report.json").read_text())["train_data"] == str(out / "prepared" / "train")
    with pytest.raises(ValueError, match="under output_dir"):
        finetune(str(corpus["model"]), corpus["train"], stream_files=True, **settings)


def test_prepared_data_of_another_max_seq_len_is_refused(corpus):
    with pytest.raises(ValueError, match="prepared with max_seq_len=64, not the 32 asked for"):
        finetune(str(corpus["model"]), str(corpus["prepared"]), max_seq_len=32, **QUICK)


@pytest.mark.slow
@pytest.mark.parametrize("data", ["prepared", "streamed_tsv"])
def test_streamed_run_killed_mid_epoch_resumes_to_the_same_weights(corpus, tmp_path, data):
    settings = {"epochs": 2, "batch_size": 2, "learning_rate": 3e-3, "seed": 5, "checkpoint_every": 2,
                "shuffle_buffer": 6, "jit_compile": False, "max_seq_len": MAX_SEQ_LEN}  # fmt: skip
    model, train = corpus["model"], str(corpus["prepared"])
    if data == "streamed_tsv":
        train = tmp_path / "train.tsv"
        train.write_text("".join(f"{d[0]}\t{d[1]}\n" for d in _turns(corpus)))
        settings["stream_files"] = True
    _finish(_launch(tmp_path, _job(tmp_path, "straight", model, train, settings)))

    job = _job(tmp_path, "killed", model, train, settings, delay=0.3)
    killed_at = _kill_mid_epoch(tmp_path, job, min_batch=4, pause=0.4)
    assert killed_at["epoch"] == 0 and killed_at["batch"] >= 4 and not Path(job["weights"]).exists()
    if data == "streamed_tsv":
        assert (Path(job["output"]) / "prepared" / "train" / "manifest.json").is_file()

    _resume_to_the_same_weights(tmp_path, job, killed_at)
    assert not (Path(job["output"]) / "prepared").exists()  # the streamed copy is scratch


@pytest.mark.slow
def test_two_local_workers_on_their_own_shards_train_like_one_process(corpus, tmp_path):
    # As test_training's two-worker test: turns of equal token counts, no clipping. Unshuffled,
    # with shards of 2 and batches of 4, worker 0's half batch k is shard 2k and worker 1's is
    # shard 2k + 1: together the one-process run's batch k.
    tok = corpus["tok"]
    by_length = {}
    for word in "abcdefghijklmnopqrstuvwxyz0123456789":
        turns = [f"Say {word}", f"I say {word}"]
        by_length.setdefault(tuple(len(tok.encode(turn)) for turn in turns), []).append(turns)
    dialogues = max(by_length.values(), key=len)[:8]
    assert len(dialogues) == 8
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"turns": turns}) + "\n" for turns in dialogues))
    prepared = tmp_path / "prepared"
    prepare(train, prepared, tok, max_seq_len=MAX_SEQ_LEN, shard_size=2, workers=1, progress=False)
    settings = {"epochs": 2, "batch_size": 4, "learning_rate": 3e-3, "seed": 1, "jit_compile": False,
                "clip_norm": None, "shuffle_buffer": 0}  # fmt: skip

    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    cluster = {"worker": workers}
    jobs = [
        _job(tmp_path, f"worker{i}", corpus["model"], prepared, settings,
             tf_config={"cluster": cluster, "task": {"type": "worker", "index": i}})
        for i in range(2)
    ]  # fmt: skip
    processes = [_launch(tmp_path, job) for job in jobs]
    single = _launch(tmp_path, _job(tmp_path, "single", corpus["model"], prepared, settings))
    for process in processes + [single]:
        _finish(process, timeout=300)

    report = json.loads((Path(jobs[0]["output"]) / "training_report.json").read_text())
    assert report["input_pipelines"] == 2  # each worker read its own shards
    chief, other, alone = (_weights(tmp_path / f"{name}.npz") for name in ("worker0", "worker1", "single"))
    initial = _weights_of(corpus["model"])
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(alone, initial, strict=True))  # it trained
    for a, b, c in zip(chief, other, alone, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, atol=1e-5)


def _weights_of(model_dir):
    from tfdialogpt import DialoGPT

    return [w.numpy() for w in DialoGPT.from_pretrained(model_dir).weights]
