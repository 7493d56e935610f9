r"""GPT-2's byte-level BPE as TensorFlow ops: encode, decode and dialogues inside a graph.

`TextGraph` gives the ids `tfdialogpt.tokenizer.Tokenizer` gives, byte for byte, with stock
TensorFlow and TensorFlow Text ops only (what a stock TF Serving build links: no
`tf.py_function`, no custom ops). It is a `tf.Module`, so a SavedModel that holds it keeps its
SentencePiece resource, and the export loads in a process that imports only `tensorflow` and
`tensorflow_text`. Building one needs `tokenizers` and `sentencepiece` (for the model proto).

Encoding, per text:
1. Invalid UTF-8 (possible over the wire, never in a Python str) becomes U+FFFD first, as
   `bytes.decode("utf-8", "replace")` does: the graph encodes what `Tokenizer` encodes for
   that decoded str.
2. A literal `<|endoftext|>` is the special id, as in `Tokenizer` (HF `tokenizers` cuts the
   text at special tokens first and encodes the pieces between them on their own).
3. GPT-2's split `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
   needs a lookahead RE2 lacks. The lookahead only stops `\s+` from taking the last
   whitespace character before a non-whitespace one, so a mark byte (0xFF, never in valid
   UTF-8) is put before every such character and the text is cut there; each part is then
   split with the pattern minus `\s+(?!\S)` (by `regex_replace` marking each match and a cut:
   `tf_text.regex_split` stops at the first NUL byte). RE2's `\s` is ASCII only and its
   Unicode tables are older than those of the engine under `Tokenizer` (Oniguruma), so `\s`,
   `\p{L}` and `\p{N}` are spelled out as ranges read from that engine (`split_patterns`).
4. Each piece's bytes are spelled in GPT-2's byte alphabet and BPE-merged by
   `tf_text.SentencepieceTokenizer` with a BPE `ModelProto` built from the vocabulary: a piece
   per id, score = -(merge rank). SentencePiece joins the best-scoring neighbouring pair whose
   concatenation is a piece, real BPE only listed merges. They differ only through tokens that
   real BPE never outputs: a token T that appears in any BPE run is "self-stable" (BPE of T's
   own characters gives T), and two neighbours concatenating to a self-stable T are never
   left side by side by BPE unless they are T's merge. So pieces that are not self-stable (or
   not made by any merge) get an unmatchable spelling, and the two algorithms agree on every
   input. For GPT-2's 50,257 tokens and the default model's 2,048 every token is self-stable.

Decoding joins each id's raw bytes (`<|endoftext|>` spelled out, as `Tokenizer.decode` does
unless told to skip it) and transcodes with U+FFFD for cut characters, equal to `decode`.

Dialogues: `encode_dialogue` takes turns `[B, N]`. Trailing `""` slots are unused; an `""`
before a row's last non-empty turn is an empty turn (a lone EOS), as `Tokenizer` treats it.
A row with no turn, or whose newest turn with its EOS is longer than `max_length`, raises
`tf.errors.InvalidArgumentError` (where `Tokenizer` raises `ValueError`); with `strict=False`
such a row comes back empty and flagged in `fits` instead, so one bad request cannot fail a
batch that TF Serving merged from many.

Example:
    >>> graph = TextGraph.from_tokenizer(Tokenizer.from_pretrained("microsoft/DialoGPT-small"))
    >>> graph.encode(tf.constant(["Hello world"])).to_list()
    [[15496, 995]]
    >>> graph.decode(tf.ragged.constant([[15496, 995]])).numpy()
    array([b'Hello world'], dtype=object)
"""

from __future__ import annotations

import functools
import json

import tensorflow as tf
import tensorflow_text as tf_text
from tokenizers import Regex, pre_tokenizers

from tfdialogpt._gpt2_vocab import bytes_to_unicode
from tfdialogpt._sentencepiece_bpe import sentencepiece_model
from tfdialogpt.tokenizer import Tokenizer

# Code points scanned for the character classes; the rest (planes 4-13, unassigned in every
# Unicode version so far, and the private-use planes 15-16) are neither letters, numbers nor
# whitespace in any version.
_SCANNED = ((0, 0x3FFFF), (0xE0000, 0xEFFFF))
MARK = b"\xff"
_SUPPORTED_BPE = {
    "dropout": None,
    "continuing_subword_prefix": None,
    "end_of_word_suffix": None,
    "byte_fallback": False,
    "ignore_merges": False,
}


class TextGraphError(ValueError):
    """The tokenizer's BPE cannot be expressed in the graph (a setting GPT-2 does not use)."""


class TextGraph(tf.Module):
    """GPT-2 byte-level BPE in TF ops, equal to `Tokenizer` on every input.

    Build it with `from_tokenizer`. Every method takes and returns tensors and works eagerly
    and inside a `tf.function` with `[None]`-shaped signatures.

    Args:
        token_strings: each id's token as spelled in the vocabulary (byte alphabet), id order.
        merges: the BPE merges as `(left, right)` pairs, in rank order.
        eos_token_id: the id of `<|endoftext|>`: special in text, BOS, EOS and turn separator.
        eos_token: its text.

    Raises:
        TextGraphError: a byte has no single-character token, or the vocabulary's tokens are
            not distinct.
    """

    def __init__(
        self,
        token_strings: list[str],
        merges: list[tuple[str, str]],
        eos_token_id: int,
        eos_token: str = "<|endoftext|>",
        name: str | None = None,
    ):
        super().__init__(name=name)
        alphabet = bytes_to_unicode()
        char_to_byte = {char: byte for byte, char in alphabet.items()}
        index = {token: token_id for token_id, token in enumerate(token_strings)}
        if len(index) != len(token_strings):
            raise TextGraphError("the vocabulary spells two ids the same way")
        missing = [byte for byte, char in alphabet.items() if char not in index]
        if missing:
            raise TextGraphError(f"no token for {len(missing)} bytes, e.g. {missing[:5]}")
        self.vocab_size = len(token_strings)
        self.eos_token_id = int(eos_token_id)
        self.eos_token = eos_token
        model = sentencepiece_model(token_strings, merges, self.eos_token_id)
        self._run_end_pattern, self._piece_pattern = split_patterns()
        self._sentencepiece = tf_text.SentencepieceTokenizer(model=model, out_type=tf.int32)
        self._byte_to_char = tf.constant([ord(alphabet[b]) for b in range(256)], tf.int32)
        # What HF's byte-level decoder writes per token: its bytes when every character is in
        # the alphabet, else the token's own UTF-8 (an added token such as `<|endoftext|>`).
        self._token_bytes = tf.constant(
            [
                bytes(char_to_byte[c] for c in token)
                if all(c in char_to_byte for c in token)
                else token.encode("utf-8")
                for token in token_strings
            ],
            tf.string,
        )

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> TextGraph:
        """Build from a `tfdialogpt.tokenizer.Tokenizer`'s vocabulary and merges.

        Raises:
            TypeError: `tokenizer` is not a `Tokenizer`.
            TextGraphError: its BPE uses a setting the graph does not reproduce (dropout,
                subword prefixes or suffixes, byte fallback, `ignore_merges`), or its ids
                have gaps.

        Example:
            >>> TextGraph.from_tokenizer(Tokenizer.from_pretrained("default")).vocab_size
            2048
        """
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"tokenizer must be a Tokenizer, got {type(tokenizer).__name__}")
        # The HF object's own serialisation: the one place its merges can be read.
        state = json.loads(tokenizer._tokenizer.to_str())
        model = state["model"]
        for key, supported in _SUPPORTED_BPE.items():
            if model.get(key, supported) != supported:
                raise TextGraphError(f"BPE setting {key}={model[key]!r} is not supported")
        vocab = dict(model["vocab"])
        vocab.update({added["content"]: added["id"] for added in state["added_tokens"]})
        strings = {token_id: token for token, token_id in vocab.items()}
        if sorted(strings) != list(range(tokenizer.vocab_size)):
            raise TextGraphError(f"token ids are not 0..{tokenizer.vocab_size - 1} without gaps")
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        return cls(
            [strings[i] for i in range(tokenizer.vocab_size)],
            merges,
            tokenizer.eos_token_id,
            tokenizer.eos_token,
        )

    # ------------------------------------------------------------------ encoding

    def encode(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """Encode UTF-8 texts, as `Tokenizer.encode` does each one.

        Args:
            texts: string `[B]`; invalid UTF-8 is read as U+FFFD first.

        Returns:
            int32 ids, ragged `[B, (T)]`; a literal `<|endoftext|>` is the special id.

        Example:
            >>> graph.encode(tf.constant(["Hi!<|endoftext|>"])).to_list()
            [[17250, 0, 50256]]
        """
        texts = tf.strings.unicode_transcode(
            tf.convert_to_tensor(texts, tf.string),
            "UTF-8",
            "UTF-8",
            errors="replace",
            replacement_char=0xFFFD,
        )
        segments = tf.strings.split(texts, sep=self.eos_token)  # [B, (S)]; never empty rows
        parts = tf.strings.split(
            tf.strings.regex_replace(segments.flat_values, self._run_end_pattern, MARK + rb"\0"),
            sep=MARK,
        )  # [S, (M)]
        # Not `tf_text.regex_split`: it stops at the first NUL byte of its input.
        pieces = tf.strings.split(
            tf.strings.regex_replace(parts.flat_values, self._piece_pattern, rb"\0" + MARK),
            sep=MARK,
        )  # [M, (W)], with an empty last piece after each part
        piece_bytes = tf.strings.bytes_split(pieces.flat_values)  # [W, (bytes)]
        codes = tf.reshape(tf.io.decode_raw(piece_bytes.flat_values, tf.uint8), [-1])
        spelled = tf.strings.unicode_encode(
            piece_bytes.with_flat_values(tf.gather(self._byte_to_char, tf.cast(codes, tf.int32))),
            "UTF-8",
        )
        ids = self._sentencepiece.tokenize(spelled).with_row_splits_dtype(tf.int64)  # [W, (P)]
        pieces = pieces.with_row_splits_dtype(tf.int64)
        parts = parts.with_row_splits_dtype(tf.int64)
        per_segment = parts.with_flat_values(pieces.with_flat_values(ids)).merge_dims(1, -1)
        eos = tf.fill([tf.shape(per_segment.row_splits)[0] - 1, 1], self.eos_token_id)
        closed = tf.concat([per_segment, eos], axis=1)  # each segment + EOS
        joined = segments.with_row_splits_dtype(tf.int64).with_flat_values(closed).merge_dims(1, 2)
        return joined[:, :-1]  # the last segment of a text has no EOS after it

    def encode_dialogue(
        self,
        turns: tf.Tensor,
        max_length: tf.Tensor | int | None = None,
        strict: bool = True,
    ) -> tuple[tf.RaggedTensor, tf.Tensor, tf.Tensor]:
        """Encode dialogue histories as `Tokenizer.encode_dialogue` does, with truncation.

        Args:
            turns: string `[B, N]`, oldest first. Trailing `""` slots are unused; an `""`
                before the last non-empty slot is an empty turn (a lone EOS).
            max_length: `None` (keep everything), or a positive int or int `[B]`: the oldest
                whole turns are dropped until the rest fits. A turn is never cut.
            strict: raise (`tf.errors.InvalidArgumentError`) on a row that cannot be
                encoded; when False such rows come back empty and `fits` says which.

        Returns:
            `(ids, lengths, fits)`: int32 ids ragged `[B, (T)]`, `turn1 <eos> ... turnN <eos>`;
            int64 lengths `[B]`; bool `fits` `[B]`, False for a row with no turn or whose
            newest turn alone (with its EOS) is longer than `max_length`.

        Raises:
            tf.errors.InvalidArgumentError: `max_length` is not positive, or (strict) a row
                does not fit.

        Example:
            >>> ids, lengths, fits = graph.encode_dialogue(tf.constant([["Hi!", "Hello"]]), 8)
            >>> ids.to_list(), lengths.numpy(), fits.numpy()
            ([[17250, 0, 50256, 15496, 50256]], array([5]), array([ True]))
        """
        turns = tf.convert_to_tensor(turns, tf.string)
        turns.shape.assert_has_rank(2)
        batch, slots = tf.shape(turns, tf.int64)[0], tf.shape(turns, tf.int64)[1]
        eos = tf.fill([batch * slots, 1], self.eos_token_id)
        per_turn = tf.concat([self.encode(tf.reshape(turns, [-1])), eos], axis=1)  # [B*N, (L)]
        slot = tf.range(slots)[tf.newaxis, :]
        num_turns = tf.reduce_max(tf.where(turns != "", slot + 1, 0), axis=1)  # [B]
        in_dialogue = slot < num_turns[:, tf.newaxis]
        lengths = tf.where(in_dialogue, tf.reshape(per_turn.row_lengths(), [batch, slots]), 0)
        keep, fits = in_dialogue, num_turns > 0
        if max_length is not None:
            max_length = tf.broadcast_to(tf.cast(max_length, tf.int64), [batch])
            tf.debugging.assert_positive(max_length, "encode_dialogue: max_length must be positive")
            # Suffix sums grow towards the oldest turn: the kept turns are a suffix.
            keep &= tf.cumsum(lengths, axis=1, reverse=True) <= max_length[:, tf.newaxis]
            newest = tf.gather(lengths, tf.maximum(num_turns - 1, 0), batch_dims=1)
            fits &= newest <= max_length
            if strict:
                tf.debugging.Assert(
                    tf.reduce_all(fits | (num_turns == 0)),
                    [
                        "encode_dialogue: the newest turn with its EOS is longer than max_length "
                        "(rows' newest-turn lengths, max_length):",
                        newest,
                        max_length,
                    ],
                )
        if strict:
            tf.debugging.Assert(
                tf.reduce_all(num_turns > 0),
                [
                    'encode_dialogue: a row has no turn (every slot is ""); turns per row:',
                    num_turns,
                ],
            )
        dialogues = tf.RaggedTensor.from_uniform_row_length(per_turn, slots)  # [B, N, (L)]
        ids = tf.ragged.boolean_mask(dialogues, keep & fits[:, tf.newaxis]).merge_dims(1, 2)
        return ids, ids.row_lengths(), fits

    # ------------------------------------------------------------------ decoding

    def decode(
        self,
        ids: tf.Tensor | tf.RaggedTensor,
        lengths: tf.Tensor | None = None,
        skip_special_tokens: bool = False,
    ) -> tf.Tensor:
        """Decode ids to UTF-8 text, as `Tokenizer.decode` does each row.

        Args:
            ids: integer ids, ragged `[B, (T)]` or dense `[B, T]`.
            lengths: with dense ids, each row's length `[B]` (the rest is padding).
            skip_special_tokens: drop `<|endoftext|>` ids before decoding.

        Returns:
            string `[B]`, always valid UTF-8: a cut character becomes U+FFFD.

        Raises:
            tf.errors.InvalidArgumentError: an id is outside `[0, vocab_size)`.

        Example:
            >>> graph.decode(tf.constant([[15496, 995, 50256]]), lengths=tf.constant([2]))
            <tf.Tensor: shape=(1,), dtype=string, numpy=array([b'Hello world'], dtype=object)>
        """
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.convert_to_tensor(ids)
            ids = tf.RaggedTensor.from_tensor(ids, lengths=lengths)
        elif lengths is not None:
            raise ValueError("decode: pass lengths only with dense ids")
        ids = tf.cast(ids, tf.int32)
        tf.debugging.Assert(
            tf.reduce_all((ids.flat_values >= 0) & (ids.flat_values < self.vocab_size)),
            [
                f"decode: ids must be in [0, {self.vocab_size}); got min/max:",
                tf.reduce_min(ids.flat_values),
                tf.reduce_max(ids.flat_values),
            ],
        )
        if skip_special_tokens:
            ids = tf.ragged.boolean_mask(ids, ids != self.eos_token_id)
        raw = tf.strings.reduce_join(ids.with_flat_values(tf.gather(self._token_bytes, ids.flat_values)), axis=-1)
        return tf.strings.unicode_transcode(raw, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)

    @staticmethod
    def strip(texts: tf.Tensor) -> tf.Tensor:
        """Leading and trailing whitespace removed, as Python's `str.strip()` does each text.

        Example:
            >>> TextGraph.strip(tf.constant(["\u3000 Hi!\n"])).numpy()[0].decode()
            'Hi!'
        """
        return tf.strings.regex_replace(texts, _strip_pattern(), "")


@functools.lru_cache(maxsize=1)
def _strip_pattern() -> str:
    # Python's whitespace (`str.isspace`: Unicode White_Space plus the separators U+001C-U+001F).
    spaces = "".join(rf"\x{{{code:X}}}" for code in range(0x110000) if chr(code).isspace())
    return f"^[{spaces}]+|[{spaces}]+$"


@functools.lru_cache(maxsize=1)
def split_patterns() -> tuple[str, str]:
    """RE2 patterns for the pre-tokenization: `(run_end, piece)`.

    `run_end` matches a whitespace character and the non-whitespace one after it; `piece` is
    GPT-2's pattern without `\\s+(?!\\S)`. `\\s`, `\\p{L}` and `\\p{N}` are spelled out as
    code point ranges read from the regex engine `Tokenizer` runs (Oniguruma, inside HF
    `tokenizers`), whose Unicode version differs from RE2's (e.g. Unicode 16's Egyptian
    hieroglyphs are letters there and not in RE2). Takes a few seconds, once per process.
    """
    space, letter, number = (
        "".join(rf"\x{{{lo:X}}}-\x{{{hi:X}}}" for lo, hi in _code_point_ranges(pattern))
        for pattern in (r"\s+", r"\p{L}+", r"\p{N}+")
    )
    piece = (
        rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{letter}]+| ?[{number}]+| ?[^{space}{letter}{number}]+"
        rf"|[{space}]+"
    )
    return rf"[{space}][^{space}]", piece


def _code_point_ranges(pattern: str) -> list[tuple[int, int]]:
    """Inclusive code point ranges that `pattern` (a character class run) matches in HF."""
    ranges = []
    split = pre_tokenizers.Split(Regex(pattern), behavior="removed")
    for first, last in _SCANNED:
        # Surrogates cannot be in a str; cut the scan around them.
        for lo, hi in ((first, min(last, 0xD7FF)), (max(first, 0xE000), last)):
            if lo > hi:
                continue
            text = "".join(map(chr, range(lo, hi + 1)))
            start = 0
            # The pieces left are the gaps between matches; offsets count characters.
            for _, (gap_start, gap_end) in split.pre_tokenize_str(text) + [("", (len(text),) * 2)]:
                if gap_start > start:
                    ranges.append((lo + start, lo + gap_start - 1))
                start = gap_end
    return ranges
