"""The export through TensorFlow's TF1 session loader: the path of TF Serving's C++
`LoadSavedModel` and `saved_model_cli run` (restore op + main op in a Session, then the
SignatureDef's tensor names), which `tf.saved_model.load` does not take."""

from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the chat signatures' ops, linked by TF Serving)
from serving_utils import greedy_reference, left_pad

from tfdialogpt.serving import signatures as contract

PROMPTS = [[5, 9, 33, 71, 256], [120, 256, 7, 8, 200, 14, 3, 256], [42, 256]]
GREEDY = dict(max_new_tokens=10, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=0)
GREEDY |= {"do_sample": False, "no_repeat_ngram_size": 0}


@contextlib.contextmanager
def serving_session(path):
    """run(name, feeds) -> (outputs, the SignatureDef's defaults) of signature `name`, run as TF
    Serving runs it: the SavedModel loaded once into one session, which every signature shares."""
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    try:
        with graph.as_default():  # only while loading: the test runs eager code beside the session
            meta_graph = tf.compat.v1.saved_model.loader.load(session, [contract.SERVING_TAG], path)

        def run(name, feeds):
            sig = meta_graph.signature_def[name]
            feed_dict = {sig.inputs[key].name: value for key, value in feeds.items()}
            outputs = session.run({key: spec.name for key, spec in sig.outputs.items()}, feed_dict)
            return outputs, {key: tf.make_ndarray(value) for key, value in sig.defaults.items()}

        yield run
    finally:
        session.close()


def test_tf1_session_loader_runs_every_signature(shared_export, serving_models):
    path = shared_export.path
    loaded = tf.saved_model.load(path)
    ids, mask = left_pad(PROMPTS)
    sequences, lengths = greedy_reference(serving_models[0], PROMPTS, GREEDY["max_new_tokens"])
    with serving_session(path) as run:
        for name in (contract.GENERATE_SIGNATURE, contract.GENERATE_XLA_SIGNATURE):
            per_row = {key: [value] * len(PROMPTS) for key, value in GREEDY.items()}  # one value per row
            out, _ = run(name, dict(input_ids=ids, attention_mask=mask, **per_row))
            np.testing.assert_array_equal(out["sequences"], sequences, err_msg=name)
            np.testing.assert_array_equal(out["lengths"], lengths, err_msg=name)
        turns = np.array([[b"Hello", b""], [b"Hi there!", b"How are you?"]], object)
        for name in (contract.CHAT_SIGNATURE, contract.CHAT_XLA_SIGNATURE, contract.DEFAULT_SIGNATURE):
            out, defaults = run(name, {"turns": turns})  # the settings from the SignatureDef
            expected = loaded.signatures[name](
                turns=tf.constant(turns), **{k: tf.constant(v) for k, v in defaults.items()}
            )
            for key in ("reply", "sequences", "lengths"):
                np.testing.assert_array_equal(out[key], expected[key].numpy(), err_msg=f"{name} {key}")
        target = np.zeros_like(ids)
        target[:, -2:] = 1
        feeds = dict(input_ids=ids, attention_mask=np.ones_like(ids), target_mask=target)
        out, _ = run(contract.SCORE_SIGNATURE, feeds)
        expected = loaded.signatures[contract.SCORE_SIGNATURE](**{k: tf.constant(v) for k, v in feeds.items()})
        np.testing.assert_allclose(out["log_probs"], expected["log_probs"].numpy(), atol=1e-5)
