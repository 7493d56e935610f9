"""GPT-2 / DialoGPT byte-level BPE tokenizer, built on HF `tokenizers`.

DialoGPT uses GPT-2's tokenizer unchanged. A dialogue is its turns joined and closed by
`<|endoftext|>` (id 50256), which is also BOS, EOS and the padding id:

    turn1<|endoftext|>turn2<|endoftext|>...turnN<|endoftext|>

The model then writes the reply after the last `<|endoftext|>` and ends it with another.

This module is pure tokenization: it imports neither TensorFlow nor Keras, so data pipelines,
servers and tests can use it without loading a framework.

Example:
    >>> tokenizer = Tokenizer.from_pretrained("microsoft/DialoGPT-small")
    >>> tokenizer.encode("Hello world")
    [15496, 995]
    >>> tokenizer.encode_dialogue(["Hi!", "Hello, how are you?"])
    [17250, 0, 50256, 15496, 11, 703, 389, 345, 30, 50256]
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors

from tfdialogpt import hub, padding
from tfdialogpt._text_checks import TokenizerError, check_ids, check_str, check_str_list
from tfdialogpt.config import DEFAULT_MODEL_DIR

ENDOFTEXT = "<|endoftext|>"
# GPT-2 and DialoGPT have 1024 positions; written into `tokenizer_config.json`.
MODEL_MAX_LENGTH = 1024

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_FILE = "tokenizer.json"


class Tokenizer:
    """GPT-2's byte-level BPE with DialoGPT's turn format.

    The pipeline is fixed to GPT-2's: byte-level pre-tokenization with GPT-2's regex and no
    prefix space, BPE, and the byte-level decoder. `<|endoftext|>` is a special token: it is
    recognised when it appears literally in the text (as in HF's `GPT2Tokenizer`, so
    `encode("hi" + tokenizer.eos_token)` works) and can be skipped when decoding.

    Args:
        bpe: a `tokenizers.models.BPE` holding GPT-2's vocabulary and merges.
        eos_token: the end-of-text token; must be in the vocabulary.

    Raises:
        TokenizerError: `eos_token` is not in the vocabulary.

    Example:
        >>> tokenizer = Tokenizer.from_files("vocab.json", "merges.txt")
        >>> ids = tokenizer.encode("Hello world")
        >>> ids, tokenizer.decode(ids)
        ([15496, 995], 'Hello world')
    """

    def __init__(self, bpe: models.BPE, eos_token: str = ENDOFTEXT):
        if not isinstance(bpe, models.BPE):
            raise TypeError(f"bpe must be a tokenizers.models.BPE, got {type(bpe).__name__}")
        eos_token_id = bpe.token_to_id(eos_token)
        if eos_token_id is None:
            raise TokenizerError(f"the vocabulary has no end-of-text token {eos_token!r}")
        tokenizer = tokenizers.Tokenizer(bpe)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        tokenizer.add_special_tokens([AddedToken(eos_token, special=True, normalized=False)])
        self._tokenizer = tokenizer
        self._eos_token = eos_token
        self._eos_token_id = eos_token_id
        # Cached: `get_vocab_size` builds the whole vocabulary map on every call.
        self._vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_files(cls, vocab: str | os.PathLike, merges: str | os.PathLike, eos_token: str = ENDOFTEXT) -> Tokenizer:
        """Load from GPT-2's `vocab.json` and `merges.txt`.

        Args:
            vocab: path to `vocab.json` (token string to id).
            merges: path to `merges.txt` (`#version` header, then one `left right` a line).
            eos_token: the end-of-text token.

        Returns:
            The tokenizer.

        Raises:
            TokenizerError: a file is missing or cannot be parsed.

        Example:
            >>> Tokenizer.from_files("gpt2/vocab.json", "gpt2/merges.txt").vocab_size
            50257
        """
        for path in (vocab, merges):
            if not Path(path).is_file():
                raise TokenizerError(f"tokenizer file not found: {os.fspath(path)}")
        try:
            bpe = models.BPE.from_file(os.fspath(vocab), os.fspath(merges))
        except Exception as error:  # tokenizers raises a bare Exception on bad files
            raise TokenizerError(
                f"cannot read BPE files {os.fspath(vocab)} and {os.fspath(merges)}: {error}"
            ) from error
        return cls(bpe, eos_token=eos_token)

    @classmethod
    def _from_tokenizer_json(cls, path: str | os.PathLike, eos_token: str) -> Tokenizer:
        # Only the BPE model is taken from `tokenizer.json`; the pipeline around it is GPT-2's.
        try:
            bpe = tokenizers.Tokenizer.from_file(os.fspath(path)).model
        except Exception as error:
            raise TokenizerError(f"cannot read {os.fspath(path)}: {error}") from error
        if not isinstance(bpe, models.BPE):
            raise TokenizerError(f"{os.fspath(path)} holds a {type(bpe).__name__} model; expected BPE")
        return cls(bpe, eos_token=eos_token)

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike,
        cache_dir: str | os.PathLike | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        eos_token: str = ENDOFTEXT,
    ) -> Tokenizer:
        """Load from a local directory or a Hugging Face hub repository.

        A directory is read as it is: `vocab.json` + `merges.txt` if present, else
        `tokenizer.json`. Anything else is taken as a hub id and resolved with
        `tfdialogpt.hub` (`huggingface_hub.hf_hub_download`), which uses the local hub
        cache and honours `HF_HUB_OFFLINE`.

        Args:
            path_or_hub_id: a directory, or a hub id like `"microsoft/DialoGPT-small"`.
            cache_dir: hub cache directory; defaults to huggingface_hub's.
            revision: hub branch, tag or commit; defaults to `main`.
            local_files_only: `True` reads the local hub cache only; `False` (the default)
                uses the hub unless `HF_HUB_OFFLINE` is set (as in `tfdialogpt.hub`).
            eos_token: the end-of-text token.

        Returns:
            The tokenizer.

        Raises:
            TokenizerError: the directory or repository lacks tokenizer files, the id is
                neither a directory nor a valid hub id, or the hub cannot be reached.

        Example:
            >>> Tokenizer.from_pretrained("microsoft/DialoGPT-small").eos_token_id
            50256
        """
        if not isinstance(path_or_hub_id, (str, os.PathLike)):
            raise TypeError(f"path_or_hub_id must be a str or path, got {type(path_or_hub_id).__name__}")
        local = DEFAULT_MODEL_DIR if str(path_or_hub_id) == "default" else Path(path_or_hub_id)
        if local.is_dir():
            if (local / VOCAB_FILE).is_file() and (local / MERGES_FILE).is_file():
                return cls.from_files(local / VOCAB_FILE, local / MERGES_FILE, eos_token)
            if (local / TOKENIZER_FILE).is_file():
                return cls._from_tokenizer_json(local / TOKENIZER_FILE, eos_token)
            raise TokenizerError(f"directory {local} has neither {VOCAB_FILE} + {MERGES_FILE} nor {TOKENIZER_FILE}")
        if local.exists():
            raise TokenizerError(f"{local} is a file; expected a directory or a hub id")
        return cls._from_hub(os.fspath(path_or_hub_id), cache_dir, revision, local_files_only, eos_token)

    @classmethod
    def _from_hub(
        cls,
        repo_id: str,
        cache_dir: str | os.PathLike | None,
        revision: str | None,
        local_files_only: bool,
        eos_token: str,
    ) -> Tokenizer:
        repo = hub.HubRepo(repo_id, cache_dir=cache_dir, revision=revision, local_files_only=local_files_only)
        try:
            vocab = repo.download(VOCAB_FILE)
            merges = repo.download(MERGES_FILE) if vocab else None
            if vocab and merges:
                return cls.from_files(vocab, merges, eos_token)
            tokenizer_json = repo.download(TOKENIZER_FILE)
        except hub.HubError as error:
            raise TokenizerError(str(error)) from None
        if tokenizer_json:
            return cls._from_tokenizer_json(tokenizer_json, eos_token)
        raise TokenizerError(
            f"hub repository {repo.describe()} has neither {VOCAB_FILE} + {MERGES_FILE} nor {TOKENIZER_FILE}"
        )

    def save_pretrained(self, directory: str | os.PathLike) -> list[Path]:
        """Write the files HF `GPT2Tokenizer` and `GPT2TokenizerFast` load.

        Args:
            directory: created if missing.

        Returns:
            The paths written: `vocab.json`, `merges.txt`, `tokenizer_config.json`,
            `special_tokens_map.json`.

        Example:
            >>> tokenizer.save_pretrained("out")  # then GPT2Tokenizer.from_pretrained("out")
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = [Path(path) for path in self._tokenizer.model.save(os.fspath(directory))]
        eos = self._eos_token
        special_tokens = {"bos_token": eos, "eos_token": eos, "unk_token": eos}
        config = {
            "tokenizer_class": "GPT2Tokenizer",
            "add_prefix_space": False,
            "add_bos_token": False,
            "errors": "replace",
            # Our decode() does no clean-up; keep HF's decode identical.
            "clean_up_tokenization_spaces": False,
            "model_max_length": MODEL_MAX_LENGTH,
            "added_tokens_decoder": {
                str(self._eos_token_id): {
                    "content": eos,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": True,
                }
            },
            **special_tokens,
        }
        for name, content in (
            ("tokenizer_config.json", config),
            ("special_tokens_map.json", special_tokens),
        ):
            path = directory / name
            path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
            written.append(path)
        return written

    # ------------------------------------------------------------------ properties

    @property
    def eos_token(self) -> str:
        """The end-of-text token, `<|endoftext|>` for GPT-2."""
        return self._eos_token

    @property
    def eos_token_id(self) -> int:
        """The end-of-text id, 50256 for GPT-2: BOS, EOS, turn separator and padding."""
        return self._eos_token_id

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (50257 for GPT-2)."""
        return self._vocab_size

    def fingerprint(self) -> str:
        """`sha256:<hex>` of what decides the ids (vocabulary, merges, BPE options, EOS token),
        taken from the loaded model rather than file bytes: the same for `vocab.json` +
        `merges.txt` and `tokenizer.json`, whatever the `tokenizers` version. Prepared data
        records it to catch a mismatched tokenizer (`tfdialogpt.training.read_prepared`)."""
        if getattr(self, "_fingerprint", None) is None:
            state = json.loads(self._tokenizer.to_str())["model"]
            options = {
                k: state.get(k) or None for k in ("unk_token", "continuing_subword_prefix", "end_of_word_suffix")
            }
            options.update({k: bool(state.get(k)) for k in ("fuse_unk", "byte_fallback", "ignore_merges")})
            canonical = {
                "pipeline": "gpt2-byte-level",
                "eos_token": self._eos_token,
                "vocab": sorted(state["vocab"].items(), key=lambda item: item[1]),
                # "a b" strings in older `tokenizers`, [a, b] pairs in newer ones
                "merges": [m if isinstance(m, str) else " ".join(m) for m in state["merges"]],
                "options": {**options, "dropout": state.get("dropout")},
            }
            text = json.dumps(canonical, ensure_ascii=False, separators=(",", ":"))
            self._fingerprint = "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
        return self._fingerprint

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eos_token={self._eos_token!r})"

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str) -> list[int]:
        """Encode one string.

        Args:
            text: any string; a literal `<|endoftext|>` becomes the special id.

        Returns:
            Token ids, no special tokens added.

        Example:
            >>> tokenizer.encode("Hello world")
            [15496, 995]
        """
        check_str(text, "text")
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode several strings (in parallel threads).

        Args:
            texts: a list or tuple of strings.

        Returns:
            One id list per string.

        Example:
            >>> tokenizer.encode_batch(["Hello", " world"])
            [[15496], [995]]
        """
        texts = check_str_list(texts, "texts")
        return [encoding.ids for encoding in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int] | np.ndarray, skip_special_tokens: bool = False) -> str:
        """Decode ids back to text.

        Byte sequences that are not valid UTF-8 (a cut multi-byte character) decode to
        U+FFFD, as in GPT-2.

        Args:
            ids: token ids, a list or a 1-D integer array.
            skip_special_tokens: drop `<|endoftext|>` from the output.

        Returns:
            The text.

        Raises:
            TypeError: `ids` is not a sequence of integers.
            ValueError: an id is outside `[0, vocab_size)`.

        Example:
            >>> tokenizer.decode([15496, 995, 50256], skip_special_tokens=True)
            'Hello world'
        """
        ids = self._check_ids(ids, "ids")
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def encode_dialogue(self, turns: Sequence[str], max_length: int | None = None) -> list[int]:
        """Encode a dialogue history in DialoGPT's format, each turn closed by EOS.

        Args:
            turns: the turns, oldest first.
            max_length: if given, the oldest whole turns are dropped until the rest fits in
                this many tokens. A turn is never cut.

        Returns:
            `turn1 <eos> turn2 <eos> ... turnN <eos>` as ids.

        Raises:
            ValueError: `turns` is empty, `max_length` is not positive, or the newest turn
                alone (with its EOS) is longer than `max_length`.

        Example:
            >>> tokenizer.encode_dialogue(["Hi!", "Hello, how are you?"], max_length=8)
            [15496, 11, 703, 389, 345, 30, 50256]
        """
        turns = check_str_list(turns, "turns")
        if not turns:
            raise ValueError("turns is empty; a dialogue needs at least one turn")
        if max_length is not None:
            if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)):
                raise TypeError(f"max_length must be an int, got {type(max_length).__name__}")
            if max_length <= 0:
                raise ValueError(f"max_length must be positive, got {max_length}")
        eos = self._eos_token_id
        encoded = [ids + [eos] for ids in self.encode_batch(turns)]
        if max_length is None:
            return [token for turn in encoded for token in turn]
        if len(encoded[-1]) > max_length:
            raise ValueError(
                f"the newest turn is {len(encoded[-1])} tokens with its EOS, longer than "
                f"max_length={max_length}; shorten it or raise the budget"
            )
        kept: list[list[int]] = []
        total = 0
        for turn in reversed(encoded):
            if total + len(turn) > max_length:
                break
            kept.append(turn)
            total += len(turn)
        return [token for turn in reversed(kept) for token in turn]

    def pad(
        self,
        sequences: Sequence[Sequence[int]],
        side: str = "left",
        pad_id: int | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pad id sequences into a batch.

        Left padding is what generation needs: every history then ends at the last column,
        where the reply starts.

        Args:
            sequences: non-empty id sequences.
            side: `"left"` or `"right"`.
            pad_id: the padding id; defaults to `eos_token_id` (GPT-2 has no pad token).
            pad_to_multiple_of: round the length up to a multiple of this, so that XLA sees
                few distinct shapes.

        Returns:
            `(input_ids, attention_mask)`, both `np.int32` of shape `[B, T]`; the mask is 1 on
            tokens and 0 on padding.

        Raises:
            ValueError: no sequences, an empty sequence, or a bad `side`.

        Example:
            >>> ids, mask = tokenizer.pad([[1, 2, 3], [4]])
            >>> ids.tolist(), mask.tolist()
            ([[1, 2, 3], [50256, 50256, 4]], [[1, 1, 1], [0, 0, 1]])
        """
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        if isinstance(sequences, (str, bytes)) or not isinstance(sequences, (Sequence, np.ndarray)):
            raise TypeError(f"sequences must be a list of id lists, got {type(sequences).__name__}")
        if len(sequences) == 0:
            raise ValueError("sequences is empty; expected at least one id sequence")
        rows = [self._check_ids(row, f"sequences[{i}]") for i, row in enumerate(sequences)]
        for i, row in enumerate(rows):
            if not row:
                raise ValueError(f"sequences[{i}] is empty; every row needs at least one token")
        if pad_id is None:
            pad_id = self._eos_token_id
        elif isinstance(pad_id, bool) or not isinstance(pad_id, (int, np.integer)):
            raise TypeError(f"pad_id must be an int, got {type(pad_id).__name__}")
        length = max(len(row) for row in rows)
        if pad_to_multiple_of is not None:
            if pad_to_multiple_of <= 0:
                raise ValueError(f"pad_to_multiple_of must be positive, got {pad_to_multiple_of}")
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        return padding.left_pad(rows, pad_id, length, side=side)

    def _check_ids(self, ids: Iterable[int] | np.ndarray, name: str) -> list[int]:
        return check_ids(ids, self._vocab_size, name)
