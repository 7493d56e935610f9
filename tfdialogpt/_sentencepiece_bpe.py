"""GPT-2's BPE as a SentencePiece BPE `ModelProto` (see `text_graph` for why the two agree)."""

from __future__ import annotations

import functools

# Spellings no input can hold: the input to SentencePiece is in the byte alphabet only.
_UNMATCHABLE = "\ue000"
_UNK_PIECE = "\ue001unk"


def sentencepiece_model(token_strings: list[str], merges: list[tuple[str, str]], eos_token_id: int) -> bytes:
    """A SentencePiece BPE `ModelProto` whose merges are the vocabulary's real BPE merges.

    Piece i is id i, scored -(rank of the merge making it). Tokens real BPE never outputs (no
    merge makes them, or BPE of their own characters is not themselves) are spelled so that
    nothing matches them; see the module docstring for why this makes the two agree.
    """
    from sentencepiece import sentencepiece_model_pb2 as spm
    from tokenizers import models

    ranks = {left + right: rank for rank, (left, right) in reversed(list(enumerate(merges)))}
    bpe = models.BPE({token: i for i, token in enumerate(token_strings)}, merges)
    proto = spm.ModelProto()
    piece_type = spm.ModelProto.SentencePiece
    for token_id, token in enumerate(token_strings):
        score, kind, spelling = 0.0, piece_type.NORMAL, token
        if token_id == eos_token_id:
            kind = piece_type.CONTROL
        elif len(token) > 1:
            rank = ranks.get(token)
            stable = rank is not None and [t.value for t in bpe.tokenize(token)] == [token]
            if stable:
                score = -float(rank)
            else:
                spelling = f"{_UNMATCHABLE}{token_id}"
        proto.pieces.add(piece=spelling, score=score, type=kind)
    proto.pieces.add(piece=_UNK_PIECE, score=0.0, type=piece_type.UNKNOWN)
    spec = proto.trainer_spec
    spec.model_type = spm.TrainerSpec.BPE
    spec.vocab_size = len(token_strings) + 1
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = len(token_strings), -1, -1, -1
    spec.byte_fallback = False
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.precompiled_charsmap = _inert_charsmap()
    normalizer.add_dummy_prefix = False
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = False
    return proto.SerializeToString()


@functools.lru_cache(maxsize=1)
def _inert_charsmap() -> bytes:
    """A normalization table whose one rule never applies (U+10FFFF -> "A"; the input is in the
    byte alphabet, U+0021-U+0143). Normalizing with it is the identity, as with no table, but
    SentencePiece then does not log "precompiled_charsmap is empty" to stderr at every load.
    The table's format is SentencePiece's own: its trainer compiles it from a rule file."""
    import io
    import os
    import tempfile

    import sentencepiece

    with tempfile.TemporaryDirectory() as scratch:
        rules = os.path.join(scratch, "rules.tsv")
        with open(rules, "w", encoding="utf-8") as f:
            f.write("10FFFF\t41\n")
        model = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(["abc"] * 8),
            model_writer=model,
            model_type="char",
            vocab_size=6,
            normalization_rule_tsv=rules,
            minloglevel=3,
        )
    from sentencepiece import sentencepiece_model_pb2 as spm

    return spm.ModelProto.FromString(model.getvalue()).normalizer_spec.precompiled_charsmap
