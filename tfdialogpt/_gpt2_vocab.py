"""Rebuild GPT-2's `vocab.json` and `merges.txt` from tiktoken-style BPE ranks.

GPT-2's byte-level BPE is shipped by OpenAI in two forms: the original `encoder.json` +
`vocab.bpe` pair (what HF calls `vocab.json` + `merges.txt`) and tiktoken's "mergeable ranks"
file, one `base64(token bytes) rank` a line. The second form ships inside the PyPI sdist of
`openai-whisper` as `whisper/assets/gpt2.tiktoken`, so we can rebuild the first form from a
package registry alone. No network access happens in this module.

Both forms hold the same information. In GPT-2 a token's id equals its rank, the 256 single
bytes come first (in `bytes_to_unicode` order) and merge number `i` in `merges.txt` creates
token `256 + i`. A token's merge is recovered by running byte-level BPE on its bytes with only
the ranks below its own: the last step leaves exactly two parts, and those are the merge.

Example:
    >>> ranks = read_tiktoken_ranks_from_sdist("openai_whisper-20250625.tar.gz")
    >>> vocab, merges = vocab_and_merges_from_ranks(ranks)
    >>> write_vocab_files("gpt2-vocab", vocab, merges)
"""

from __future__ import annotations

import base64
import functools
import json
import tarfile
from collections.abc import Mapping
from pathlib import Path

ENDOFTEXT = "<|endoftext|>"
TIKTOKEN_MEMBER = "whisper/assets/gpt2.tiktoken"
WHISPER_SDIST_VERSION = "20250625"
MERGES_HEADER = "#version: 0.2"

# GPT-2's sizes: 256 byte tokens + 50,000 merges, then `<|endoftext|>`.
GPT2_NUM_MERGES = 50_000
GPT2_VOCAB_SIZE = 50_257
GPT2_EOS_ID = 50_256


class VocabBuildError(ValueError):
    """The ranks file or sdist does not hold a well-formed byte-level BPE vocabulary."""


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable unicode character.

    Printable Latin-1 bytes map to themselves; the other 68 bytes (control characters,
    space, ...) map to code points 256 and up, in byte order. This is why a leading space
    shows up as `Ġ` (U+0120) in `vocab.json`.

    Returns:
        A dict of all 256 byte values to distinct one-character strings.

    Example:
        >>> bytes_to_unicode()[ord(" ")]
        'Ġ'
    """
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values = printable[:]
    code_points = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            code_points.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(byte_values, code_points, strict=True)}


def token_bytes_to_str(token: bytes) -> str:
    """Spell token bytes in GPT-2's printable alphabet (the keys of `vocab.json`).

    Example:
        >>> token_bytes_to_str(b" world")
        'Ġworld'
    """
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def parse_tiktoken_bpe(text: str) -> dict[bytes, int]:
    """Parse a `.tiktoken` file: one `base64(token bytes) rank` per non-empty line.

    Args:
        text: the file's content.

    Returns:
        A dict of token bytes to rank.

    Raises:
        VocabBuildError: a line is malformed, or a token or rank appears twice.
    """
    ranks: dict[bytes, int] = {}
    seen_ranks: set[int] = set()
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise VocabBuildError(f"line {line_number}: expected `base64 rank`, found {line[:80]!r}")
        try:
            token = base64.b64decode(fields[0], validate=True)
            rank = int(fields[1])
        except ValueError as error:
            raise VocabBuildError(f"line {line_number}: {error}") from error
        if token in ranks or rank in seen_ranks:
            raise VocabBuildError(f"line {line_number}: duplicate token or rank {rank}")
        ranks[token] = rank
        seen_ranks.add(rank)
    return ranks


def read_tiktoken_ranks_from_sdist(sdist_path: str | Path, member: str = TIKTOKEN_MEMBER) -> dict[bytes, int]:
    """Read the BPE ranks out of an `openai-whisper` sdist without installing it.

    Args:
        sdist_path: path to `openai_whisper-<version>.tar.gz`.
        member: the file's path inside the package (the sdist's top folder is ignored).

    Returns:
        A dict of token bytes to rank (50,256 entries for `gpt2.tiktoken`).

    Raises:
        VocabBuildError: the archive holds no such file.
    """
    with tarfile.open(sdist_path, mode="r:gz") as archive:
        for info in archive.getmembers():
            # sdists put everything under `<name>-<version>/`.
            if info.isfile() and info.name.split("/", 1)[-1] == member:
                handle = archive.extractfile(info)
                assert handle is not None
                return parse_tiktoken_bpe(handle.read().decode("ascii"))
    raise VocabBuildError(f"{sdist_path} has no `{member}`")


def _bpe_split(token: bytes, ranks: Mapping[bytes, int], max_rank: int) -> list[bytes]:
    """Byte-level BPE of `token` using only merges whose result ranks below `max_rank`."""
    parts = [bytes([b]) for b in token]
    while True:
        best_index, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_index, best_rank = i, rank
        if best_index < 0:
            return parts
        parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]


def recover_merges(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recover the ordered merge list from mergeable ranks.

    Args:
        ranks: token bytes to rank, as read from a `.tiktoken` file. The 256 single bytes
            must be present and every longer token must be reachable by merges.

    Returns:
        One `(left, right)` pair per multi-byte token, sorted by the token's rank.

    Raises:
        VocabBuildError: a byte is missing, or a token does not split into two earlier tokens.
    """
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise VocabBuildError(f"ranks miss {len(missing)} single bytes, e.g. {missing[:5]}")
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = _bpe_split(token, ranks, max_rank=rank)
        if len(parts) != 2:
            raise VocabBuildError(
                f"token {token!r} (rank {rank}) splits into {len(parts)} parts with the lower ranks; expected 2"
            )
        merges.append((parts[0], parts[1]))
    return merges


def vocab_and_merges_from_ranks(
    ranks: Mapping[bytes, int], special_tokens: Mapping[str, int] | None = None
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Turn mergeable ranks into GPT-2's `vocab.json` dict and `merges.txt` pairs.

    Args:
        ranks: token bytes to rank.
        special_tokens: added to the vocabulary as they are; defaults to GPT-2's
            `{"<|endoftext|>": len(ranks)}`.

    Returns:
        `(vocab, merges)`: vocab maps printable token strings to ids (id = rank), sorted by
        id; merges are printable `(left, right)` pairs in rank order.

    Raises:
        VocabBuildError: ids are not `0..N-1`, or merges are not recoverable.

    Example:
        >>> vocab, merges = vocab_and_merges_from_ranks(ranks)
        >>> vocab["Hello"], merges[0]
        (15496, ('Ġ', 't'))
    """
    if special_tokens is None:
        special_tokens = {ENDOFTEXT: len(ranks)}
    vocab = {token_bytes_to_str(token): rank for token, rank in ranks.items()}
    for token, token_id in special_tokens.items():
        if token in vocab:
            raise VocabBuildError(f"special token {token!r} is also a BPE token")
        vocab[token] = token_id
    ids = sorted(vocab.values())
    if ids != list(range(len(vocab))):
        raise VocabBuildError(f"ids are not 0..{len(vocab) - 1} without gaps or repeats")
    merges = [(token_bytes_to_str(left), token_bytes_to_str(right)) for left, right in recover_merges(ranks)]
    return dict(sorted(vocab.items(), key=lambda item: item[1])), merges


def write_vocab_files(
    output_dir: str | Path, vocab: Mapping[str, int], merges: list[tuple[str, str]]
) -> tuple[Path, Path]:
    """Write `vocab.json` and `merges.txt` in the layout of OpenAI's GPT-2 release.

    `vocab.json` uses `json.dumps`'s defaults (ASCII with `\\u` escapes), as OpenAI's
    `encoder.json` does; `merges.txt` is `#version: 0.2` then one `left right` per line.

    Args:
        output_dir: created if missing.
        vocab: token string to id.
        merges: `(left, right)` pairs in rank order.

    Returns:
        The paths of `vocab.json` and `merges.txt`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    vocab_path = output_dir / "vocab.json"
    merges_path = output_dir / "merges.txt"
    vocab_path.write_text(json.dumps(dict(vocab)), encoding="utf-8")
    lines = [MERGES_HEADER] + [f"{left} {right}" for left, right in merges]
    merges_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vocab_path, merges_path


def check_gpt2_sizes(vocab: Mapping[str, int], merges: list[tuple[str, str]]) -> None:
    """Check the sizes and the end-of-text id of GPT-2's vocabulary.

    Raises:
        VocabBuildError: naming the size or id that differs.
    """
    if len(vocab) != GPT2_VOCAB_SIZE:
        raise VocabBuildError(f"vocab has {len(vocab)} entries; expected {GPT2_VOCAB_SIZE}")
    if len(merges) != GPT2_NUM_MERGES:
        raise VocabBuildError(f"found {len(merges)} merges; expected {GPT2_NUM_MERGES}")
    if vocab.get(ENDOFTEXT) != GPT2_EOS_ID:
        raise VocabBuildError(f"{ENDOFTEXT} has id {vocab.get(ENDOFTEXT)}; expected {GPT2_EOS_ID}")


def build_gpt2_vocab_from_sdist(sdist_path: str | Path, output_dir: str | Path) -> tuple[Path, Path]:
    """Write GPT-2's `vocab.json` and `merges.txt` from an `openai-whisper` sdist.

    Args:
        sdist_path: `openai_whisper-20250625.tar.gz` (any version shipping `gpt2.tiktoken`).
        output_dir: where to write the two files.

    Returns:
        The paths of `vocab.json` and `merges.txt`.

    Raises:
        VocabBuildError: the sdist is not usable or the result is not GPT-2-sized.

    Example:
        >>> build_gpt2_vocab_from_sdist("openai_whisper-20250625.tar.gz", "gpt2-vocab")
        (PosixPath('gpt2-vocab/vocab.json'), PosixPath('gpt2-vocab/merges.txt'))
    """
    ranks = read_tiktoken_ranks_from_sdist(sdist_path)
    vocab, merges = vocab_and_merges_from_ranks(ranks)
    check_gpt2_sizes(vocab, merges)
    return write_vocab_files(output_dir, vocab, merges)
