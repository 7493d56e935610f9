"""Fine-tuning DialoGPT with Keras: data readers and pipeline, loss, optimizer, resumable runs,
`tf.distribute`, and the paper's reply metrics.

    >>> from tfdialogpt.training import finetune, evaluate
    >>> result = finetune("default", "chats.tsv", output_dir="out", epochs=2)  # doctest: +SKIP
    >>> evaluate("out", "valid.tsv")["perplexity"]  # doctest: +SKIP
"""

from tfdialogpt.training.callbacks import ResumableBackup
from tfdialogpt.training.data import (
    DataError,
    DataIssue,
    Dialogue,
    DialogueBatches,
    DialogueFile,
    build_example,
    encode_dialogues,
    read_chatterbot_yaml,
    read_dialogues,
    read_jsonl,
    read_tsv,
)
from tfdialogpt.training.distribute import make_strategy
from tfdialogpt.training.finetune import (
    FinetuneResult,
    TrainingSettings,
    dtype_policy,
    evaluate,
    finetune,
)
from tfdialogpt.training.losses import LanguageModelLoss, Perplexity
from tfdialogpt.training.metrics import reply_metrics
from tfdialogpt.training.optimization import WarmupDecay, make_optimizer

__all__ = [
    "DataError",
    "DataIssue",
    "Dialogue",
    "DialogueBatches",
    "DialogueFile",
    "FinetuneResult",
    "LanguageModelLoss",
    "Perplexity",
    "ResumableBackup",
    "TrainingSettings",
    "WarmupDecay",
    "build_example",
    "dtype_policy",
    "encode_dialogues",
    "evaluate",
    "finetune",
    "make_optimizer",
    "make_strategy",
    "read_chatterbot_yaml",
    "read_dialogues",
    "read_jsonl",
    "read_tsv",
    "reply_metrics",
]
