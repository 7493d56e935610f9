"""Fine-tuning DialoGPT with Keras: data readers and pipeline, loss, optimizer, resumable runs,
`tf.distribute`, and the paper's reply metrics.

    >>> from tfdialogpt.training import finetune, evaluate
    >>> result = finetune("default", "chats.tsv", output_dir="out", epochs=2)  # doctest: +SKIP
    >>> evaluate("out", "valid.tsv")["perplexity"]  # doctest: +SKIP

Modules: `readers` and `ccc` (dialogue files; no TensorFlow; `dialogues` holds what they give),
`examples` (DialoGPT's example layout; NumPy only), `prepare` (files tokenized once, in
parallel, into TFRecord shards; `chunks` is the workers' part, `records` the TF-free
`tf.train.Example` encoding), `shards` (the manifest, `read_prepared`), `pipeline` (`tf.data`
batches), `streaming` (prepared shards streamed), `sources` (which of the two), `settings`
(`TrainingSettings`), `fit` (`finetune`), `evaluation` (`evaluate`), `losses`, `metrics`,
`optimization`, `callbacks`, `distribute`, `bpe`, and `_compat` (private Keras workarounds).
Public names are imported lazily, so reading data loads no TensorFlow.
"""

from __future__ import annotations

from tfdialogpt._lazy import lazy_names

_PUBLIC = {
    "DataError": "tfdialogpt.training.dialogues",
    "DataIssue": "tfdialogpt.training.dialogues",
    "Dialogue": "tfdialogpt.training.dialogues",
    "DialogueBatches": "tfdialogpt.training.pipeline",
    "DialogueFile": "tfdialogpt.training.dialogues",
    "FinetuneResult": "tfdialogpt.training.fit",
    "LanguageModelLoss": "tfdialogpt.training.losses",
    "OutputDirError": "tfdialogpt.training.fit",
    "PreparedBatches": "tfdialogpt.training.streaming",
    "Perplexity": "tfdialogpt.training.losses",
    "PreparedDataError": "tfdialogpt.training.shards",
    "ResumableBackup": "tfdialogpt.training.callbacks",
    "TokenizerMismatchError": "tfdialogpt.training.shards",
    "TrainingSettings": "tfdialogpt.training.settings",
    "WarmupDecay": "tfdialogpt.training.optimization",
    "build_example": "tfdialogpt.training.examples",
    "dtype_policy": "tfdialogpt.training.fit",
    "encode_dialogues": "tfdialogpt.training.examples",
    "evaluate": "tfdialogpt.training.evaluation",
    "finetune": "tfdialogpt.training.fit",
    "load_manifest": "tfdialogpt.training.shards",
    "make_optimizer": "tfdialogpt.training.optimization",
    "make_strategy": "tfdialogpt.training.distribute",
    "prepare": "tfdialogpt.training.prepare",
    "read_ccc": "tfdialogpt.training.ccc",
    "read_chatterbot_yaml": "tfdialogpt.training.readers",
    "read_dialogues": "tfdialogpt.training.readers",
    "read_jsonl": "tfdialogpt.training.readers",
    "read_prepared": "tfdialogpt.training.shards",
    "read_tsv": "tfdialogpt.training.readers",
    "reply_metrics": "tfdialogpt.training.metrics",
}

__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_names(__name__, globals(), _PUBLIC)
