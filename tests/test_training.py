"""Training: loss parity with HF transformers (PyTorch), the optimizer and schedule, fine-tuning
that memorises, resume after SIGKILL, two-worker MultiWorkerMirroredStrategy, evaluation."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tfdialogpt.config import DialoGPTConfig
from tfdialogpt.training import (
    DialogueBatches,
    LanguageModelLoss,
    Perplexity,
    TrainingSettings,
    WarmupDecay,
    build_example,
    dtype_policy,
    evaluate,
    finetune,
    reply_metrics,
)
from tfdialogpt.training.bpe import train_byte_level_bpe
from tfdialogpt.training.evaluation import generate_replies
from tfdialogpt.training.examples import Example
from tfdialogpt.training.fit import compile_for_training

DIALOGUES = [
    ["What is your name?", "My name is Tiny."],
    ["How old are you?", "I am two days old."],
    ["Where do you live?", "In a test suite."],
    ["Hello", "Hi there!", "How are you?", "Fine, thanks."],
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [t for d in DIALOGUES for t in d] * 3
    return train_byte_level_bpe(texts, 300, tmp_path_factory.mktemp("bpe"))


def tiny_config(tokenizer) -> DialoGPTConfig:
    eos = tokenizer.eos_token_id
    return DialoGPTConfig(
        vocab_size=tokenizer.vocab_size,
        max_positions=64,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        embedding_dropout=0.0,
        attention_dropout=0.0,
        residual_dropout=0.0,
        bos_token_id=eos,
        eos_token_id=eos,
    )


@pytest.fixture(scope="module")
def tiny_model_dir(tokenizer, tmp_path_factory):
    """A randomly initialised tiny model with its tokenizer, in HF layout."""
    import keras

    from tfdialogpt import DialoGPT

    keras.utils.set_random_seed(3)
    directory = tmp_path_factory.mktemp("tiny_model")
    DialoGPT(tiny_config(tokenizer)).save_pretrained(directory, tokenizer=tokenizer)
    return directory


# ---- loss parity ---------------------------------------------------------------------------------


def _reference_batch(config, turn_weights, seed=0, batch_size=4):
    rng = np.random.default_rng(seed)
    eos = config.eos_token_id
    examples = []
    for weights in turn_weights:
        turns = [rng.integers(0, eos, rng.integers(1, 7)).tolist() for _ in weights]
        example, why = build_example(turns, weights, eos, 64)
        assert why is None
        examples.append(example)
    batches = DialogueBatches(examples, batch_size, eos, seed=seed)
    return next(iter(batches.train_dataset(0)))


def _hf_inputs(inputs, labels, weights):
    """Inputs and labels for HF: the full sequence (HF shifts labels itself), -100 = no loss."""
    ids, mask = inputs["input_ids"].numpy(), inputs["attention_mask"].numpy()
    labels, weights = labels.numpy(), weights.numpy()
    B, T = ids.shape
    full = np.zeros((B, T + 1), np.int64)
    full_mask = np.zeros((B, T + 1), np.int64)
    hf_labels = np.full((B, T + 1), -100, np.int64)
    full[:, :T], full_mask[:, :T] = ids, mask
    for row in range(B):
        n = int(mask[row].sum())
        if n:
            full[row, n], full_mask[row, n] = labels[row, n - 1], 1
        trained = weights[row] > 0
        hf_labels[row, 1:][trained] = labels[row][trained]
    return full, full_mask, hf_labels


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_training_step_loss_equals_hf_pytorch_with_turn_weights(tiny_reference, jit_compile):
    import torch

    from tfdialogpt import DialoGPT

    config = tiny_reference.config
    # a 0.0 turn in the middle, a 0.0 first turn, trailing 0.0 turns: none of them add loss
    weights = [[1.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]]
    inputs, labels, sample_weight = _reference_batch(config, weights)
    model = DialoGPT.from_pretrained(tiny_reference.path("tf_h5"))
    compile_for_training(model, TrainingSettings(learning_rate=1e-3), total_updates=10, jit_compile=jit_compile)
    logs = model.train_on_batch(inputs, labels, sample_weight=sample_weight, return_dict=True)

    full, full_mask, hf_labels = _hf_inputs(inputs, labels, sample_weight)
    assert (hf_labels != -100).sum() == int(sample_weight.numpy().sum())  # 0/1 weights here
    with torch.no_grad():
        out = tiny_reference.pt(
            torch.tensor(full), attention_mask=torch.tensor(full_mask), labels=torch.tensor(hf_labels)
        )
    assert abs(logs["loss"] - out.loss.item()) < 1e-4
    assert abs(logs["perplexity"] - math.exp(out.loss.item())) < 1e-3 * logs["perplexity"]
    # the step changed the weights
    assert not np.allclose(model.wte.embeddings.numpy(), tiny_reference.pt.transformer.wte.weight.detach().numpy())


def test_fractional_turn_weights_give_the_weighted_mean(tiny_reference):
    import torch

    from tfdialogpt import DialoGPT

    config = tiny_reference.config
    inputs, labels, sample_weight = _reference_batch(config, [[1.0, 0.5, 2.0], [0.0, 1.0, 0.25]], seed=1, batch_size=2)
    model = DialoGPT.from_pretrained(tiny_reference.path("tf_h5"))
    ours = float(LanguageModelLoss()(labels, model(inputs), sample_weight=sample_weight))
    full, full_mask, _ = _hf_inputs(inputs, labels, sample_weight)
    with torch.no_grad():
        logits = tiny_reference.pt(torch.tensor(full), attention_mask=torch.tensor(full_mask)).logits[:, :-1]
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        torch.tensor(labels.numpy(), dtype=torch.long).reshape(-1),
        reduction="none",
    )
    w = torch.tensor(sample_weight.numpy()).reshape(-1)
    assert abs(ours - float((ce * w).sum() / w.sum())) < 1e-5


def test_perplexity_is_exact_across_batches():
    metric = Perplexity()
    rng = np.random.default_rng(0)
    total, count = 0.0, 0.0
    for T in (3, 7):
        logits = rng.normal(size=(2, T, 5)).astype(np.float32)
        labels = rng.integers(0, 5, (2, T))
        weights = rng.integers(0, 2, (2, T)).astype(np.float32)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        ce = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
        total, count = total + (ce * weights).sum(), count + weights.sum()
        metric.update_state(labels, logits, sample_weight=weights)
    assert float(metric.result()) == pytest.approx(math.exp(total / count), rel=1e-5)


# ---- optimizer -----------------------------------------------------------------------------------


def test_warmup_then_decay_counts_optimizer_updates():
    linear = WarmupDecay(1.0, warmup_steps=4, total_steps=12)
    values = [float(linear(step)) for step in range(13)]
    assert values[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert values[4] == pytest.approx(1.0) and values[8] == pytest.approx(0.5) and values[12] == pytest.approx(0.0)
    accumulated = WarmupDecay(1.0, warmup_steps=4, total_steps=12, accumulation_steps=3)
    assert [float(accumulated(s)) for s in (0, 2, 3, 5)] == pytest.approx([0.25, 0.25, 0.5, 0.5])
    noam = WarmupDecay(2.0, warmup_steps=4, total_steps=100, decay="noam")
    assert float(noam(15)) == pytest.approx(2.0 * math.sqrt(4 / 16))
    cosine = WarmupDecay(1.0, warmup_steps=0, total_steps=10, decay="cosine")
    assert float(cosine(5)) == pytest.approx(0.5, abs=1e-6)


def test_gradient_accumulation_equals_one_big_batch(tiny_model_dir):
    from tfdialogpt import DialoGPT

    rng = np.random.default_rng(0)
    examples = [Example(rng.integers(0, 200, 9).astype(np.int32), np.ones(8, np.float32)) for _ in range(4)]
    big = next(iter(DialogueBatches(examples, 4, 0).eval_dataset()))

    def half(part, i):
        rows = slice(i * 2, (i + 1) * 2)
        return {k: v[rows] for k, v in part.items()} if isinstance(part, dict) else part[rows]

    halves = [tuple(half(part, i) for part in big) for i in range(2)]
    results = []
    for accumulation, batches in ((1, [big]), (2, halves)):
        model = DialoGPT.from_pretrained(tiny_model_dir)
        settings = TrainingSettings(learning_rate=1e-2, accumulation_steps=accumulation, warmup_steps=0)
        compile_for_training(model, settings, total_updates=5, jit_compile=False)
        for inputs, labels, weights in batches:
            model.train_on_batch(inputs, labels, sample_weight=weights)
        results.append([w.numpy() for w in model.weights])
    start = DialoGPT.from_pretrained(tiny_model_dir)
    assert not np.allclose(results[0][0], start.weights[0].numpy())
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)  # Adam's first step divides by |g|: fp noise shows


def test_mixed_bfloat16_step_matches_float32(tiny_model_dir):
    from tfdialogpt import DialoGPT

    rng = np.random.default_rng(1)
    examples = [Example(rng.integers(0, 200, 12).astype(np.int32), np.ones(11, np.float32)) for _ in range(2)]
    inputs, labels, weights = next(iter(DialogueBatches(examples, 2, 0).eval_dataset()))
    losses = {}
    for precision in ("float32", "mixed_bfloat16"):
        with dtype_policy(precision):
            model = DialoGPT.from_pretrained(tiny_model_dir)
        assert model.h[0].attn.c_attn.compute_dtype == ("bfloat16" if precision != "float32" else "float32")
        compile_for_training(model, TrainingSettings(), total_updates=5, jit_compile=False)
        losses[precision] = model.train_on_batch(inputs, labels, sample_weight=weights)
        assert model.weights[0].dtype == "float32"  # variables stay float32
    assert losses["mixed_bfloat16"] == pytest.approx(losses["float32"], rel=2e-2)


# ---- private Keras shims -------------------------------------------------------------------------


@pytest.mark.parametrize("package", ["tensorflow", "keras"])
def test_compat_shims_warn_on_other_tensorflow_or_keras_versions(monkeypatch, package):
    import warnings

    import keras
    import tensorflow as tf

    from tfdialogpt.training import _compat

    modules = {"tensorflow": tf, "keras": keras}
    written_for = {"tensorflow": "2.21", "keras": "3.15"}
    for name, module in modules.items():  # patch releases of the versions written for: silent
        monkeypatch.setattr(module, "__version__", f"{written_for[name]}.7")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _compat.check_versions()
    monkeypatch.setattr(modules[package], "__version__", "9.4.0")
    with pytest.warns(
        _compat.CompatWarning,
        match=rf"written for {package} {written_for[package]}, "
        rf"but {package} 9\.4\.0 is installed",
    ):
        _compat.check_versions()


# ---- fine-tuning ---------------------------------------------------------------------------------


def test_finetune_memorises_and_greedy_generation_reproduces_a_reply(tiny_model_dir, tmp_path):
    from tfdialogpt import DialoGPT

    train, valid = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    lines = [json.dumps({"turns": d}) for d in DIALOGUES]
    valid.write_text("\n".join(lines) + "\n")
    lines = lines * 5
    lines.insert(2, '{"turns": "not a list"}')  # line 3: reported, skipped
    train.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = finetune(
        str(tiny_model_dir),
        train,
        valid=valid,
        output_dir=out,
        epochs=12,
        batch_size=4,
        learning_rate=1e-2,
        warmup_steps=5,
        seed=0,
        verbose=0,
        tensorboard=True,
        jit_compile=False,
    )
    assert [issue.line for issue in result.train_issues] == [3]
    loss = result.history["loss"]
    assert len(loss) == 12 and loss[-1] < 0.1 * loss[0]
    assert result.history["val_perplexity"][-1] < 1.5

    replies = generate_replies(result.model, result.tokenizer, [d[:-1] for d in DIALOGUES], max_new_tokens=12)
    assert replies == [d[-1] for d in DIALOGUES]

    # HF layout, loadable by us (same logits) and by transformers
    for name in ("config.json", "tf_model.h5", "vocab.json", "merges.txt", "training_report.json"):
        assert (out / name).is_file(), name
    assert any((out / "logs").rglob("*tfevents*"))
    assert not (out / "backup").exists()
    report = json.loads((out / "training_report.json").read_text())
    assert report["malformed_lines"]["train"] == [f'{train}:3: expected "turns": a list of at least 2 strings']
    ids = np.array([[5, 6, 7, 8]], np.int32)
    reloaded = DialoGPT.from_pretrained(out)
    np.testing.assert_allclose(reloaded(ids).numpy(), result.model(ids).numpy(), atol=1e-5)
    from transformers import TFGPT2LMHeadModel

    hf = TFGPT2LMHeadModel.from_pretrained(out)
    np.testing.assert_allclose(hf(ids).logits.numpy(), result.model(ids).numpy(), atol=1e-4)


QUICK = {"epochs": 1, "batch_size": 2, "verbose": 0, "jit_compile": False}


def _train_file(tmp_path) -> Path:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"turns": d}) + "\n" for d in DIALOGUES))
    return train


def _files(directory) -> dict:
    """{relative path: (bytes, mtime in ns)} of every file under `directory`."""
    return {
        str(path.relative_to(directory)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(Path(directory).rglob("*"))
        if path.is_file()
    }


def test_finetune_refuses_to_write_over_its_model_or_a_directory_it_did_not_make(tiny_model_dir, tmp_path):
    import shutil

    from tfdialogpt.config import DEFAULT_MODEL_DIR
    from tfdialogpt.training import OutputDirError
    from tfdialogpt.training.fit import check_output_dir

    train = _train_file(tmp_path)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (tmp_path / "link").symlink_to(model)
    before = _files(model)
    for output in (model, tmp_path / "link", str(model) + "/"):  # the same real path
        with pytest.raises(OutputDirError, match="is the directory of the model being fine-tuned") as err:
            finetune(str(model), train, output_dir=output, **QUICK)
        assert isinstance(err.value, ValueError) and "overwrite=True" in str(err.value)
    assert _files(model) == before  # same bytes, same mtimes, no file added
    with pytest.raises(OutputDirError, match="directory of the model being fine-tuned"):
        check_output_dir(DEFAULT_MODEL_DIR, "default")  # the embedded model too

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="is not empty and holds no unfinished run of finetune to resume"):
        finetune(str(model), train, output_dir=foreign, **QUICK)
    assert _files(foreign) == {"notes.txt": (b"mine", (foreign / "notes.txt").stat().st_mtime_ns)}

    for output, where in ((foreign / "notes.txt", "is a file"), (foreign / "notes.txt" / "out", "lies under")):
        with pytest.raises(OutputDirError, match=where):  # refused even with overwrite
            finetune(str(model), train, output_dir=output, overwrite=True, **QUICK)
    assert (foreign / "notes.txt").read_text() == "mine" and _files(model) == before


class Killed(Exception):
    pass


def test_finetune_writes_to_a_new_or_empty_directory_a_killed_run_or_with_overwrite(tiny_model_dir, tmp_path):
    import shutil

    import keras

    from tfdialogpt import DialoGPT
    from tfdialogpt.training import OutputDirError

    train = _train_file(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    finetune(str(tiny_model_dir), train, output_dir=empty, **QUICK)
    assert (empty / "tf_model.h5").is_file() and (empty / "training_report.json").is_file()
    with pytest.raises(OutputDirError, match="not empty"):  # a finished run is not resumed
        finetune(str(tiny_model_dir), train, output_dir=empty, **QUICK)

    # a run killed after its first epoch's backup: the same call into the same directory resumes
    class KillInSecondEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise Killed

    run = tmp_path / "run"
    with pytest.raises(Killed):
        finetune(str(tiny_model_dir), train, output_dir=run, callbacks=[KillInSecondEpoch()], **{**QUICK, "epochs": 2})
    assert (run / "backup" / "training_state.json").is_file() and not (run / "tf_model.h5").exists()
    result = finetune(str(tiny_model_dir), train, output_dir=run, **{**QUICK, "epochs": 2})
    assert result.resumed_from["epoch"] == 1 and len(result.history["loss"]) == 1
    assert (run / "tf_model.h5").is_file() and not (run / "backup").exists()

    # overwrite=True: into a directory holding other files (left as they are), or the model's own
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    finetune(str(tiny_model_dir), train, output_dir=foreign, overwrite=True, **QUICK)
    assert (foreign / "tf_model.h5").is_file() and (foreign / "notes.txt").read_text() == "mine"
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    result = finetune(str(model), train, output_dir=model, overwrite=True, **QUICK)
    ids = np.array([[5, 6, 7, 8]], np.int32)
    np.testing.assert_allclose(DialoGPT.from_pretrained(model)(ids).numpy(), result.model(ids).numpy(), atol=1e-5)


def test_evaluate_reports_perplexity_and_reply_metrics(tiny_model_dir, tmp_path):
    data = tmp_path / "valid.tsv"
    data.write_text("What is your name?\tMy name is Tiny.\nbroken line\nHello EOS Hi there!\tHow are you?\n")
    scores = evaluate(str(tiny_model_dir), data, max_new_tokens=4)
    assert scores["malformed_lines"] == 1
    assert scores["num_replies"] == 2 and scores["tokens"] > 0
    assert math.isfinite(scores["perplexity"]) and scores["perplexity"] > 1
    for key in ("bleu2", "bleu4", "nist2", "nist4", "dist1", "dist2", "entropy4", "avg_length"):
        assert key in scores and math.isfinite(scores[key]), key


def test_reply_metrics_on_known_values():
    scores = reply_metrics(["i am fine .", "hello there"], ["i am fine .", "hello there"])
    assert scores["bleu2"] == pytest.approx(100.0) and scores["bleu4"] == pytest.approx(100.0)
    assert scores["avg_length"] == 3.0 and scores["dist1"] == 1.0
    scores = reply_metrics(["a a a b", "a b"], ["x", "y"])
    assert scores["bleu2"] == 0.0 and scores["nist2"] == 0.0
    assert scores["dist1"] == pytest.approx(2 / 6) and scores["dist2"] == pytest.approx(2 / 4)  # {aa, ab}
    assert scores["entropy4"] == 0.0  # a single 4-gram
    grams = {"a": 4, "b": 2}
    assert reply_metrics(["a a a b", "a b"], ["a", "b"])["dist1"] == pytest.approx(len(grams) / 6)


# ---- resume after a kill, multi-worker -----------------------------------------------------------

WORKER = r"""
import json, os, sys, time
job = json.loads(sys.argv[1])
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
if "tf_config" in job:
    os.environ["TF_CONFIG"] = json.dumps(job["tf_config"])
import keras
import numpy as np
from tfdialogpt.training import finetune

class Slow(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        time.sleep(job.get("delay", 0.0))

result = finetune(job["model"], job["train"], output_dir=job["output"], callbacks=[Slow()], verbose=0,
                  **job["settings"])
np.savez(job["weights"], *[w.numpy() for w in result.model.weights])
with open(job["report"], "w") as f:
    json.dump({"resumed_from": result.resumed_from, "history": result.history}, f)
"""


def _job(tmp_path, name, tiny_model_dir, train, settings, **extra):
    out = tmp_path / name
    job = {
        "model": str(tiny_model_dir),
        "train": str(train),
        "output": str(out),
        "settings": settings,
        "weights": str(tmp_path / f"{name}.npz"),
        "report": str(tmp_path / f"{name}.json"),
        **extra,
    }
    return job


def _launch(tmp_path, job):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.Popen(
        [sys.executable, str(script), json.dumps(job)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process, timeout=240):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def _weights(path):
    with np.load(path) as data:
        return [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]


def _kill_mid_epoch(tmp_path, job, min_batch, pause):
    """Launches `job`, SIGKILLs it `pause` seconds after its backup reached batch `min_batch`,
    and returns the training state the backup holds then."""
    victim = _launch(tmp_path, job)
    state_file = Path(job["output"]) / "backup" / "training_state.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if state_file.is_file() and json.loads(state_file.read_text())["batch"] >= min_batch:
            break
        assert victim.poll() is None, victim.communicate()[0][-3000:]
        time.sleep(0.05)
    time.sleep(pause)  # past that backup, between two others
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    return json.loads(state_file.read_text())


def _resume_to_the_same_weights(tmp_path, job, killed_at):
    """Runs the killed `job` again: it resumes where it was killed and ends on the weights of
    the uninterrupted run (`straight.npz`)."""
    job.pop("delay")
    _finish(_launch(tmp_path, job))
    report = json.loads(Path(job["report"]).read_text())
    assert report["resumed_from"]["epoch"] == 0 and report["resumed_from"]["batch"] == killed_at["batch"]
    for a, b in zip(_weights(tmp_path / "straight.npz"), _weights(job["weights"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_same_weights(tiny_model_dir, tmp_path):
    train = tmp_path / "train.tsv"
    rows = [f"{d[0]}\t{d[1]}" for d in DIALOGUES[:3]] + ["Hello EOS Hi there!\tHow are you?"]
    train.write_text("\n".join(rows * 3) + "\n")  # 12 dialogues, batch 2: 6+ batches an epoch
    settings = {
        "epochs": 2,
        "batch_size": 2,
        "learning_rate": 3e-3,
        "seed": 5,
        "checkpoint_every": 2,
        "jit_compile": False,
    }

    straight = _launch(tmp_path, _job(tmp_path, "straight", tiny_model_dir, train, settings))
    _finish(straight)

    job = _job(tmp_path, "killed", tiny_model_dir, train, settings, delay=0.4)
    killed_at = _kill_mid_epoch(tmp_path, job, min_batch=2, pause=0.5)
    assert killed_at["epoch"] == 0 and killed_at["batch"] >= 2 and not Path(job["weights"]).exists()

    _resume_to_the_same_weights(tmp_path, job, killed_at)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_local_workers_train_like_one_process(tiny_model_dir, tmp_path):
    # Dialogues whose turns have equal token counts, and a batch size dividing their number:
    # every replica's half batch has the same weight, so the mean of the replicas' losses (what
    # Keras optimises under tf.distribute) equals the one-process loss.
    from tfdialogpt.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(tiny_model_dir)
    by_length = {}
    for word in "abcdefghijklmnopqrstuvwxyz0123456789":
        turns = [f"Say {word}", f"I say {word}"]
        by_length.setdefault(tuple(len(tokenizer.encode(turn)) for turn in turns), []).append(turns)
    dialogues = max(by_length.values(), key=len)[:8]
    assert len(dialogues) == 8
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"turns": turns}) + "\n" for turns in dialogues))
    # No clipping: under tf.distribute Keras clips each replica's gradient by its own norm
    # before summing them, which a one-process run cannot reproduce.
    settings = {"epochs": 2, "batch_size": 4, "learning_rate": 3e-3, "seed": 1, "jit_compile": False, "clip_norm": None}

    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    jobs = [
        _job(
            tmp_path,
            f"worker{i}",
            tiny_model_dir,
            train,
            settings,
            tf_config={"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}},
        )
        for i in range(2)
    ]
    processes = [_launch(tmp_path, job) for job in jobs]
    single = _launch(tmp_path, _job(tmp_path, "single", tiny_model_dir, train, settings))
    for process in processes + [single]:
        _finish(process, timeout=300)

    assert (Path(jobs[0]["output"]) / "tf_model.h5").is_file()  # the chief writes the model
    assert not (Path(jobs[1]["output"]) / "tf_model.h5").exists()
    chief, other, alone = (_weights(tmp_path / f"{name}.npz") for name in ("worker0", "worker1", "single"))
    for a, b, c in zip(chief, other, alone, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, atol=1e-5)
