"""Memory of version rollovers: an unloaded version gives its memory back.

`tf.saved_model.load` registers the SavedModel's custom gradients in TensorFlow's process-wide
gradient registry and never removes them; each entry keeps the loaded functions' graphs alive
(about 240 MB a load even for the tiny model). The server removes a version's entries when it
unloads it (`servables.release_saved_model`). See benchmarks/rollover.py.

Every RPC has a timeout and every wait is bounded."""

from __future__ import annotations

import gc
import shutil
import threading
import time
import weakref

import pytest
from serving_utils import EOS, MODEL_NAME, ServerProcess

RPC_TIMEOUT = 30.0


def _func_graphs() -> int:
    from tensorflow.python.framework import func_graph

    return sum(isinstance(o, func_graph.FuncGraph) for o in gc.get_objects())


def test_closing_a_servable_releases_its_graphs_and_gradients(shared_export):
    from tfdialogpt.serving import saved_models, servables

    registry = saved_models._gradient_registry()
    assert registry is not None, "TensorFlow's gradient registry moved: release_saved_model would do nothing"
    before, graphs = len(registry), _func_graphs()
    servable = servables.Servable(MODEL_NAME, 1, shared_export.path)
    assert servable._gradients, "the export's custom gradients (the XLA signatures' barrier) are registered"
    assert set(servable._gradients) <= set(registry)
    loaded = weakref.ref(servable._loaded)
    servable.close()
    assert loaded() is None
    assert len(registry) == before
    assert _func_graphs() <= graphs, "the loaded functions' graphs are freed"
    assert saved_models.trim_heap() is (saved_models._MALLOC_TRIM is not None)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _wait_for_log(server, text, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{server.log()}"
        assert server.process.poll() is None, f"server exited:\n{server.log()}"
        time.sleep(0.1)


@pytest.mark.slow
def test_rollovers_keep_the_server_rss_bounded(shared_export, tmp_path):
    """Five rollovers (--num-versions 1) while a client keeps asking: every request is answered
    with the same tokens, and after the first rollover RSS grows by under 50 MB a rollover (it
    grew by about 240 MB a rollover before unloads released the gradient registry's entries)."""
    from tfdialogpt.serving.client import Client

    base = tmp_path / MODEL_NAME
    shutil.copytree(shared_export.path, base / "1")
    server = ServerProcess(base, tmp_path / "server.log", "--num-versions", "1")
    prompt = [5, 9, 33, 71, EOS]
    failures, answers = [], []
    stop = threading.Event()

    def client_loop():
        deadline = time.monotonic() + 600
        with Client(server.target, MODEL_NAME, timeout=RPC_TIMEOUT, max_positions=96, eos_token_id=EOS) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    out = client.generate([prompt], max_new_tokens=6)
                    answers.append((out.model_spec.version, out.sequences[0].tolist()))
                except Exception as err:  # every failure is a test failure
                    failures.append(repr(err))
                time.sleep(0.1)

    rss = {}
    thread = threading.Thread(target=client_loop)
    try:
        server.wait_for_version(1)
        thread.start()
        for version in range(2, 7):
            incoming = base / f".incoming-{version}"  # not a number: the server ignores it until renamed
            shutil.copytree(shared_export.path, incoming)
            incoming.rename(base / str(version))
            server.wait_for_version(version)
            _wait_for_log(server, f"unloaded version {version - 1} ")
            shutil.rmtree(base / str(version - 1))
            rss[version] = _rss_mb(server.process.pid)
        served = len(answers)
        deadline = time.monotonic() + 60
        while len(answers) < served + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(120)
        server.terminate()
    assert failures == []
    assert {v for v, _ in answers} >= {1, 6}, f"requests ran before and after the rollovers: {answers[:3]}..."
    assert len({tuple(tokens) for _, tokens in answers}) == 1, "every version is the same model"
    growth = (rss[6] - rss[2]) / 4
    assert growth < 50, f"RSS after each rollover (MB): {rss}; {growth:+.0f} MB a rollover"
