"""A run whose clients have all gone stops costing work (issue 14, fault 2).

- `cancellation.Run` stops a TensorFlow loop running on one thread while a loop on another
  thread, started at the same time, runs to its end;
- the batcher drops an abandoned queued request unrun, keeps a run going while one of its
  requests still waits, and stops it when the last one goes;
- the exported signatures called with a stopped run answer CANCELLED (a decode already under
  way inside one XLA op runs to its end: `cancellation.py`);
- a stopped long-prompt run on the plain `generate` signature ends within its prefill (the
  prompt runs in chunks, one loop step each).

Every wait is bounded."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from serving_utils import CAP, EOS, MODEL_NAME, SERVE_CONFIG, bucket_pad

from tfdialogpt.serving import signatures as contract

STEPS = 4000  # a loop of about 10-40 s on these machines, unless it is stopped


def _slow_loop():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def loop(n):
        x = tf.random.stateless_normal([192, 192], seed=[1, 2])

        def body(i, x):
            return i + 1, tf.tanh(x @ x)

        i, x = tf.while_loop(lambda i, x: i < n, body, (0, x))
        return i, tf.reduce_sum(x)  # x an output too, so the loop's work is not pruned

    return loop.get_concrete_function()


def test_a_cancelled_run_stops_and_a_run_on_another_thread_does_not():
    import tensorflow as tf

    from tfdialogpt.serving import cancellation

    loop = _slow_loop()
    started = time.perf_counter()
    assert int(loop(tf.constant(100))[0]) == 100
    per_step = (time.perf_counter() - started) / 100
    steps = int(min(STEPS, max(200, 1.5 / per_step)))  # about 1.5 s
    assert cancellation.install(), "this TensorFlow lets a run be stopped"

    results, stopped = {}, cancellation.Run()

    def call(name, run, n):
        began = time.perf_counter()
        try:
            with run.active():
                results[name] = (int(loop(tf.constant(n))[0]), time.perf_counter() - began)
        except tf.errors.CancelledError:
            results[name] = ("cancelled", time.perf_counter() - began)

    threads = [
        threading.Thread(target=call, args=("stopped", stopped, STEPS * 10)),
        threading.Thread(target=call, args=("kept", cancellation.Run(), steps)),
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    stopped.cancel()
    for thread in threads:
        thread.join(120)
    assert results["stopped"][0] == "cancelled" and results["stopped"][1] < 30
    assert results["kept"][0] == steps, "the other thread's run is not stopped"
    with cancellation.Run().active():  # a fresh run after a cancelled one runs normally
        assert int(loop(tf.constant(10))[0]) == 10

    # TensorFlow's own cancellable functions still work outside our runs.
    from tensorflow.python.eager import cancellation as tf_cancellation

    manager = tf_cancellation.CancellationManager()
    timer = threading.Timer(0.3, manager.start_cancel)
    timer.start()
    began = time.perf_counter()
    with pytest.raises(tf.errors.CancelledError):
        manager.get_cancelable_function(loop)(tf.constant(STEPS * 10))
    assert time.perf_counter() - began < 30
    timer.join()


class _WaitingServable:
    """A run that waits until it is stopped or released (`go`), recording what it ran."""

    version = 1

    def __init__(self):
        from serving_utils import serve_limits

        self.limits = serve_limits()
        self.started, self.go, self.runs = threading.Event(), threading.Event(), []

    def run(self, name, inputs, control):
        from tfdialogpt.serving.errors import RequestCancelledError

        self.runs.append(inputs["input_ids"].shape[0])
        self.started.set()
        deadline = time.monotonic() + 60
        while not self.go.is_set() and time.monotonic() < deadline:
            if control.cancelled:
                raise RequestCancelledError("stopped")
            time.sleep(0.01)
        ids = inputs["input_ids"]
        return {"sequences": ids[:, -1:].repeat(2, axis=1), "lengths": np.full(len(ids), 2, np.int32)}


def _task(servable, token):
    from tfdialogpt.serving.batching import _Task, batch_key

    ids, mask = bucket_pad([[token, token]], 2)
    inputs = {"input_ids": ids, "attention_mask": mask, **contract.setting_inputs({"max_new_tokens": 2})}
    return _Task(servable, "generate", inputs, batch_key(servable, contract.GENERATE, inputs), 1)


def test_the_batcher_stops_a_run_only_when_all_its_requests_are_gone():
    from tfdialogpt.serving.batching import Batcher
    from tfdialogpt.serving.errors import RequestCancelledError

    servable = _WaitingServable()
    batcher = Batcher(max_batch_size=2, batch_timeout=0.2, num_threads=1)
    try:
        first, second, queued = _task(servable, 3), _task(servable, 4), _task(servable, 5)
        futures = [batcher.submit(first), batcher.submit(second)]
        assert servable.started.wait(30)
        batcher.submit(queued)
        queued.abandon()  # a queued request whose client left is never run
        first.abandon()
        time.sleep(0.2)
        assert not futures[1].done(), "one request of the run still waits: the run goes on"
        second.abandon()
        with pytest.raises(RequestCancelledError):
            futures[1].result(timeout=30)
        assert queued.future.cancelled()

        servable.started.clear()
        kept = _task(servable, 6)  # and the batcher serves the next request
        future = batcher.submit(kept)
        assert servable.started.wait(30)
        servable.go.set()
        assert future.result(timeout=30)["sequences"].tolist() == [[6, 6]]
    finally:
        servable.go.set()
        batcher.stop()
    assert servable.runs == [2, 1], "the abandoned queued request was not run"


@pytest.mark.parametrize("signature", ["generate", "chat", "generate_xla"])
def test_the_exported_signatures_answer_cancelled_when_stopped(shared_export, signature):
    from tfdialogpt.serving import cancellation
    from tfdialogpt.serving.errors import RequestCancelledError
    from tfdialogpt.serving.servables import Servable

    servable = Servable(MODEL_NAME, 1, shared_export.path)
    try:
        if signature == "chat":
            inputs = {"turns": np.array([[b"Hello there"]], object), **contract.setting_inputs({"max_new_tokens": 8})}
        else:
            ids, mask = bucket_pad([[5, 9, 33, EOS]], 8)
            inputs = {"input_ids": ids, "attention_mask": mask, **contract.setting_inputs({"max_new_tokens": 8})}
        answer = servable.run(signature, inputs, cancellation.Run())
        stopped = cancellation.Run()
        stopped.cancel()
        with pytest.raises(RequestCancelledError, match="clients went away"):
            servable.run(signature, inputs, stopped)
        # The next call on the same servable is unaffected.
        assert servable.run(signature, inputs)["sequences"].tolist() == answer["sequences"].tolist()
    finally:
        servable.close()


@pytest.mark.slow
def test_a_stopped_long_prompt_run_ends_within_its_prefill(serving_tokenizer, tmp_path):
    """8 rows of 1000 prompt tokens, one new token: the run is nearly all prefill (8 chunks).
    Stopped soon after it starts, it ends in a fraction of the time the whole run takes."""
    from tfdialogpt import DialoGPT
    from tfdialogpt.serving import cancellation
    from tfdialogpt.serving.errors import RequestCancelledError
    from tfdialogpt.serving.export import export
    from tfdialogpt.serving.servables import Servable

    config = SERVE_CONFIG.replace(max_positions=1024, hidden_size=384, num_layers=4, num_heads=4)
    result = export(
        DialoGPT(config),
        tmp_path / "dialogpt",
        max_new_tokens_cap=CAP,
        warmup_prompt_lengths=(),
        warmup_signatures=(),
        include_xla=False,
        tokenizer=serving_tokenizer,
    )
    servable = Servable(MODEL_NAME, 1, result.path)
    try:
        ids = np.random.default_rng(0).integers(0, EOS, (8, 1000)).astype(np.int32)
        inputs = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            **contract.setting_inputs({"max_new_tokens": 1}),
        }
        short = {**inputs, "input_ids": ids[:1, :16], "attention_mask": np.ones_like(ids[:1, :16])}
        servable.run("generate", short)  # the graph's first call
        began = time.perf_counter()
        answer = servable.run("generate", inputs)
        whole = time.perf_counter() - began

        stopped = cancellation.Run()
        timer = threading.Timer(whole / 10, stopped.cancel)
        timer.start()
        began = time.perf_counter()
        with pytest.raises(RequestCancelledError):
            servable.run("generate", inputs, stopped)
        elapsed = time.perf_counter() - began
        timer.join()
        assert elapsed < whole / 2, f"stopped at {whole / 10:.2f} s, ended at {elapsed:.2f} s of a {whole:.2f} s run"
        assert servable.run("generate", inputs)["sequences"].tolist() == answer["sequences"].tolist()
    finally:
        servable.close()
