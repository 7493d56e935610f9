"""Training a new GPT-2-style byte-level BPE (for a model trained from scratch)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int, directory: str | os.PathLike, min_frequency: int = 2):
    """Trains GPT-2's recipe (byte-level, GPT-2's regex, no prefix space) on `texts` with
    `tokenizers`, writes `vocab.json` + `merges.txt` into `directory`, and returns the
    `tfdialogpt.tokenizer.Tokenizer`. `<|endoftext|>` gets the last id, as in GPT-2.

    Args:
        vocab_size: ids in total, `<|endoftext|>` included (fewer if the texts run out of
            pairs seen `min_frequency` times).

    Example:
        >>> tok = train_byte_level_bpe(["Hello there", "Hello you"], 300, "out")  # doctest: +SKIP
        >>> tok.decode(tok.encode("Hello you"))
        'Hello you'
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from tfdialogpt.tokenizer import ENDOFTEXT, MERGES_FILE, VOCAB_FILE
    from tfdialogpt.tokenizer import Tokenizer as DialogueTokenizer

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size <= len(alphabet):
        raise ValueError(f"vocab_size must exceed the {len(alphabet)} byte symbols, got {vocab_size}")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        min_frequency=min_frequency,
        show_progress=False,
        initial_alphabet=alphabet,
        special_tokens=[],
    )
    bpe.train_from_iterator(list(texts), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    vocab = dict(sorted(state["vocab"].items(), key=lambda item: item[1]))
    vocab[ENDOFTEXT] = len(vocab)
    merges = [" ".join(m) if isinstance(m, list) else m for m in state["merges"]]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / VOCAB_FILE).write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / MERGES_FILE).write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return DialogueTokenizer.from_files(directory / VOCAB_FILE, directory / MERGES_FILE)
