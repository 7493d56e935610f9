"""Tests for the GPT-2 vocabulary rebuild and `tfdialogpt.tokenizer.Tokenizer`.

The real GPT-2 vocabulary is rebuilt once from the `openai-whisper` sdist (fetched with pip)
into `~/.cache/tfdialogpt-tests/gpt2-vocab/` and reused. Ids are checked against two
independent references: tiktoken built from the same ranks, and transformers' slow
`GPT2Tokenizer` reading the rebuilt `vocab.json` / `merges.txt`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import HUB_COMMIT, fill_hub_cache

from tfdialogpt import _gpt2_vocab
from tfdialogpt.tokenizer import Tokenizer, TokenizerError

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_gpt2_vocab.py"
CACHE_DIR = Path.home() / ".cache" / "tfdialogpt-tests" / "gpt2-vocab"
SDIST_NAME = f"openai_whisper-{_gpt2_vocab.WHISPER_SDIST_VERSION}.tar.gz"
# tiktoken's published hash of r50k_base.tiktoken (GPT-2's ranks).
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOS = 50256

# fmt: off
HAND_TEXTS = [
    "Hello world",
    # whitespace runs, tabs, newlines, leading and trailing spaces
    "a  b", "a   b", "x\n\n  y", "trailing spaces   ", "   leading spaces", "\ttab\tseparated\t\t",
    " \t \n", "", " ", "\n", "line1\r\nline2", "a \n b", "end with newline\n", "  \n\n  ",
    "word \t word", "a\u00a0b", "a\u3000b", "a\u2028b", "a\x0b\x0cb", "a\u0085b", "a\u200bb",
    "\ufeffBOM", "\x00\x01 control",
    # emoji: plain, skin tones, ZWJ sequences, flags, variation selectors
    "I love 🍕!", "👩‍👩‍👧‍👦 family", "👨🏽‍💻 coder", "🇺🇸🇯🇵🇩🇪 flags", "🏳️‍🌈", "❤️ and ❤", "👍🏽👍🏿",
    "🙂" * 40,
    # accents, precomposed and combining
    "café naïve résumé", "Crème brûlée à la mode", "e\u0301 combining", "Ångström Øre Æsir",
    "Zürich, Ærø, Łódź, İstanbul",
    # other scripts
    "你好，世界！", "こんにちは世界", "안녕하세요 여러분", "東京タワーへ行きましょう", "Привет, мир!",
    "مرحبا بالعالم", "नमस्ते दुनिया", "สวัสดีครับ", "שלום עולם", "Γειά σου Κόσμε", "ＡＢＣ　ｆｕｌｌｗｉｄｔｈ",
    # contractions and apostrophes
    "it's", "It'S", "IT'S", "James's", "'s", "'S", "he’s", "she‘s", "I'LL", "we'd've", "don't",
    "''s", "'''", "rock 'n' roll", "O'Reilly's", "y'all", "'tis", " 's", "'s's", "ʼs modifier",
    # numbers
    "3.14159", "1,000,000", "2024-06-01", "007", "12345678901234567890", "٣٤٥ digits", "½ ⅓ x²",
    "Call 555-0100 at 10:30pm", "v1.2.3-rc4",
    # code, urls, punctuation
    "<html><body>hi</body></html>", "foo@bar.com", "https://example.com/a?b=c&d=e#f",
    "C++ && C# || F#", "$100.00 €50 £3", "~~~~ ---- ....", "… — –", "∑∫√∞ ≠ ≤",
    'def f(x):\n    return x ** 2  # square\n', '{"key": [1, 2, 3]}',
    "a" * 300,
]
# fmt: on


def _load_build_script():
    spec = importlib.util.spec_from_file_location("build_gpt2_vocab", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _extract_tiktoken_file(sdist: Path, destination: Path) -> None:
    with tarfile.open(sdist, "r:gz") as archive:
        for info in archive.getmembers():
            if info.name.endswith("/" + _gpt2_vocab.TIKTOKEN_MEMBER):
                destination.write_bytes(archive.extractfile(info).read())
                return
    raise AssertionError(f"{sdist} has no {_gpt2_vocab.TIKTOKEN_MEMBER}")


@pytest.fixture(scope="session")
def gpt2_dir() -> Path:
    """Folder with the sdist, `gpt2.tiktoken`, `vocab.json` and `merges.txt` (cached)."""
    names = [SDIST_NAME, "gpt2.tiktoken", "vocab.json", "merges.txt"]
    if all((CACHE_DIR / name).is_file() for name in names):
        return CACHE_DIR
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # Build in a scratch folder and move the files in, so an interrupted run leaves no
    # half-written cache behind.
    with tempfile.TemporaryDirectory(dir=CACHE_DIR.parent) as scratch:
        scratch = Path(scratch)
        sdist = CACHE_DIR / SDIST_NAME
        if sdist.is_file():
            shutil.copy(sdist, scratch / SDIST_NAME)
        else:
            downloaded = _load_build_script().download_whisper_sdist(scratch)
            assert downloaded.name == SDIST_NAME, downloaded
        sdist = scratch / SDIST_NAME
        _gpt2_vocab.build_gpt2_vocab_from_sdist(sdist, scratch)
        _extract_tiktoken_file(sdist, scratch / "gpt2.tiktoken")
        for name in names:
            os.replace(scratch / name, CACHE_DIR / name)
    return CACHE_DIR


@pytest.fixture(scope="session")
def tokenizer(gpt2_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(gpt2_dir)


@pytest.fixture(scope="session")
def tiktoken_ranks(gpt2_dir) -> dict[bytes, int]:
    """GPT-2's ranks as tiktoken reads them, checked against r50k_base's published hash."""
    load = pytest.importorskip("tiktoken.load")
    return load.load_tiktoken_bpe(str(gpt2_dir / "gpt2.tiktoken"), expected_hash=R50K_SHA256)


@pytest.fixture(scope="session")
def tiktoken_gpt2(tiktoken_ranks):
    tiktoken = pytest.importorskip("tiktoken")
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=tiktoken_ranks,
        special_tokens={"<|endoftext|>": EOS},
    )


@pytest.fixture(scope="session")
def hf_slow(gpt2_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.GPT2Tokenizer(str(gpt2_dir / "vocab.json"), str(gpt2_dir / "merges.txt"))


@pytest.fixture(scope="session")
def corpus_lines() -> list[str]:
    """Every line of chatterbot-corpus's yml files read as text, English first.

    Empty when chatterbot-corpus is not installed: only the corpus test is then skipped.
    """
    try:
        import chatterbot_corpus as corpus
    except ImportError:
        return []
    data = Path(corpus.__file__).parent / "data"
    english = sorted((data / "english").glob("*.yml"))
    others = sorted(path for path in data.glob("*/*.yml") if path.parent.name != "english")
    assert english, f"no English yml files under {data}"
    return [line for path in english + others for line in path.read_text("utf-8").splitlines()]


def _mismatches(texts, ours, reference) -> list[str]:
    return [
        f"{text!r}: ours {mine} reference {theirs}"
        for text, mine, theirs in zip(texts, ours, reference, strict=True)
        if mine != theirs
    ]


# --------------------------------------------------------------------------- vocab rebuild


def test_bytes_to_unicode_is_a_printable_bijection():
    table = _gpt2_vocab.bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert all(char.isprintable() and not char.isspace() for char in table.values())
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"


def test_recover_merges_on_a_hand_made_table():
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"ab": 256, b"abc": 257, b"bc": 258, b"abcbc": 259})
    merges = _gpt2_vocab.recover_merges(ranks)
    # `abc` is `ab c` (bc ranks later); `abcbc` is `abc bc`.
    assert merges == [(b"a", b"b"), (b"ab", b"c"), (b"b", b"c"), (b"abc", b"bc")]


def test_recover_merges_rejects_unreachable_tokens():
    ranks = {bytes([b]): b for b in range(256)}
    ranks[b"abc"] = 256  # no `ab` or `bc` to build it from
    with pytest.raises(_gpt2_vocab.VocabBuildError, match="splits into 3 parts"):
        _gpt2_vocab.recover_merges(ranks)


def test_parse_tiktoken_bpe_rejects_bad_lines():
    with pytest.raises(_gpt2_vocab.VocabBuildError, match="line 2"):
        _gpt2_vocab.parse_tiktoken_bpe("IQ== 0\nnot-a-valid-line\n")
    with pytest.raises(_gpt2_vocab.VocabBuildError, match="duplicate"):
        _gpt2_vocab.parse_tiktoken_bpe("IQ== 0\nIg== 0\n")


def test_sdist_without_the_ranks_file_is_reported(tmp_path):
    sdist = tmp_path / "empty-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz"):
        pass
    with pytest.raises(_gpt2_vocab.VocabBuildError, match="gpt2.tiktoken"):
        _gpt2_vocab.read_tiktoken_ranks_from_sdist(sdist)


def test_rebuilt_files_have_gpt2_layout(gpt2_dir, tiktoken_ranks):
    vocab = json.loads((gpt2_dir / "vocab.json").read_text("utf-8"))
    lines = (gpt2_dir / "merges.txt").read_text("utf-8").split("\n")
    assert lines[0] == "#version: 0.2" and lines[-1] == ""
    merges = lines[1:-1]
    assert len(vocab) == 50257 and len(merges) == 50000
    assert vocab["<|endoftext|>"] == EOS and vocab["!"] == 0 and vocab["Ġgazed"] == 50255
    assert merges[:4] == ["Ġ t", "Ġ a", "h e", "i n"]
    assert merges[-3:] == ["ĠColl ider", "Ġinform ants", "Ġg azed"]
    # Merge i creates token 256 + i.
    for index in (0, 1, 999, 25_000, 49_999):
        assert vocab[merges[index].replace(" ", "")] == 256 + index
    # Our reading of the sdist equals tiktoken's reading of the extracted file.
    assert _gpt2_vocab.read_tiktoken_ranks_from_sdist(gpt2_dir / SDIST_NAME) == tiktoken_ranks


def test_build_script_cli_writes_identical_files(gpt2_dir, tmp_path):
    script = _load_build_script()
    assert script.main(["--sdist", str(gpt2_dir / SDIST_NAME), "--output", str(tmp_path)]) == 0
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / name).read_bytes() == (gpt2_dir / name).read_bytes()


# --------------------------------------------------------------------------- exact ids


def test_hello_world(tokenizer):
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.eos_token_id == EOS and tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.vocab_size == len(tokenizer) == 50257


def test_hand_texts_match_tiktoken(tokenizer, tiktoken_gpt2):
    reference = [tiktoken_gpt2.encode_ordinary(text) for text in HAND_TEXTS]
    ours = [tokenizer.encode(text) for text in HAND_TEXTS]
    assert _mismatches(HAND_TEXTS, ours, reference) == []


def test_hand_texts_match_transformers_slow_tokenizer(tokenizer, hf_slow):
    reference = [hf_slow.encode(text) for text in HAND_TEXTS]
    ours = tokenizer.encode_batch(HAND_TEXTS)
    assert _mismatches(HAND_TEXTS, ours, reference) == []


def test_corpus_matches_tiktoken_and_transformers(tokenizer, tiktoken_gpt2, hf_slow, corpus_lines):
    if not corpus_lines:
        pytest.skip("chatterbot-corpus is not installed")
    ours = tokenizer.encode_batch(corpus_lines)
    by_tiktoken = tiktoken_gpt2.encode_ordinary_batch(corpus_lines)
    assert _mismatches(corpus_lines, ours, by_tiktoken)[:5] == []
    by_transformers = [hf_slow.encode(line) for line in corpus_lines]
    assert _mismatches(corpus_lines, ours, by_transformers)[:5] == []


def test_random_strings_match_tiktoken_and_transformers(tokenizer, tiktoken_gpt2, hf_slow):
    # Whitespace runs, apostrophes and letter/number/other boundaries mixed at random: where
    # regex engines would disagree on GPT-2's pattern.
    pieces = [
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "'",
        "s",
        "S",
        "t",
        "re",
        "LL",
        "d",
        "a",
        "1",
        "é",
        "🙂",
        "\u00a0",
        "’",
        "\x0b",
        "\u3000",
        ".",
        "!?",
        "你",
        "\u0301",
        "\u200d",
        "<",
        "|",
    ]
    rng = random.Random(0)
    texts = ["".join(rng.choices(pieces, k=rng.randint(1, 16))) for _ in range(2000)]
    ours = tokenizer.encode_batch(texts)
    assert _mismatches(texts, ours, tiktoken_gpt2.encode_ordinary_batch(texts))[:5] == []
    assert _mismatches(texts, ours, [hf_slow.encode(text) for text in texts])[:5] == []


def test_decode_inverts_encode(tokenizer, corpus_lines):
    for text in HAND_TEXTS + corpus_lines:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_token_in_text_and_decode(tokenizer, tiktoken_gpt2):
    text = "Hi!<|endoftext|>Hello<|endoftext|>"
    assert tokenizer.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Hi!Hello"
    assert tokenizer.decode(np.array(ids, dtype=np.int32)) == text


def test_cut_utf8_decodes_to_replacement_character(tokenizer):
    ids = tokenizer.encode("🍕")
    assert len(ids) > 1
    assert "\ufffd" in tokenizer.decode(ids[:1])


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda t: t.encode(b"bytes"), TypeError, "text must be a str, got bytes"),
        (lambda t: t.encode(None), TypeError, "text must be a str, got NoneType"),
        (lambda t: t.encode_batch("not a list"), TypeError, "texts must be a list of str"),
        (lambda t: t.encode_batch(["ok", 3]), TypeError, r"texts\[1\] must be a str"),
        (lambda t: t.decode("15496"), TypeError, "ids must be a sequence of ints"),
        (lambda t: t.decode([1.5]), TypeError, r"ids\[0\] is a float"),
        (lambda t: t.decode(np.zeros((2, 2), dtype=np.int32)), TypeError, "ids must be a 1-D integer array"),
        (lambda t: t.decode([50257]), ValueError, r"ids\[0\] = 50257 is outside"),
        (lambda t: t.decode([-1]), ValueError, r"ids\[0\] = -1 is outside"),
    ],
)
def test_bad_inputs_raise_clear_errors(tokenizer, call, error, message):
    with pytest.raises(error, match=message):
        call(tokenizer)


# --------------------------------------------------------------------------- dialogue


def test_encode_dialogue_format(tokenizer, tiktoken_gpt2):
    turns = ["Hi!", "Hello, how are you?", "Fine, thanks."]
    ids = tokenizer.encode_dialogue(turns)
    expected = []
    for turn in turns:
        expected += tokenizer.encode(turn) + [EOS]
    assert ids == expected
    joined = "".join(turn + "<|endoftext|>" for turn in turns)
    assert ids == tiktoken_gpt2.encode(joined, allowed_special="all")
    assert tokenizer.encode_dialogue(("one turn",)) == tokenizer.encode("one turn") + [EOS]


def test_encode_dialogue_drops_oldest_whole_turns(tokenizer):
    turns = ["first turn here", "a much longer second turn with many words in it", "third", "last"]
    lengths = [len(tokenizer.encode(turn)) + 1 for turn in turns]
    full = tokenizer.encode_dialogue(turns)
    assert tokenizer.encode_dialogue(turns, max_length=len(full)) == full
    # One token short: the first turn goes, nothing is cut.
    assert tokenizer.encode_dialogue(turns, max_length=len(full) - 1) == (tokenizer.encode_dialogue(turns[1:]))
    # Room for the first turn and the last two but not the long second one: only a suffix
    # of the history is kept, so the first turn goes too.
    budget = lengths[0] + lengths[2] + lengths[3]
    assert budget < sum(lengths[1:])
    assert tokenizer.encode_dialogue(turns, max_length=budget) == tokenizer.encode_dialogue(turns[2:])
    assert tokenizer.encode_dialogue(turns, max_length=lengths[3]) == tokenizer.encode_dialogue(turns[3:])


def test_encode_dialogue_newest_turn_too_long(tokenizer):
    newest = "this newest turn is far too long for the budget"
    length = len(tokenizer.encode(newest)) + 1
    with pytest.raises(ValueError, match=rf"{length} tokens.*max_length=5"):
        tokenizer.encode_dialogue(["short", newest], max_length=5)


@pytest.mark.parametrize(
    "turns, max_length, error, message",
    [
        ([], None, ValueError, "turns is empty"),
        ("a single string", None, TypeError, "turns must be a list of str"),
        (["ok", None], None, TypeError, r"turns\[1\] must be a str"),
        (["ok"], 0, ValueError, "max_length must be positive"),
        (["ok"], 2.5, TypeError, "max_length must be an int"),
    ],
)
def test_encode_dialogue_bad_inputs(tokenizer, turns, max_length, error, message):
    with pytest.raises(error, match=message):
        tokenizer.encode_dialogue(turns, max_length=max_length)


# --------------------------------------------------------------------------- padding


def test_pad_left_and_right(tokenizer):
    sequences = [[1, 2, 3], [4], [5, 6]]
    ids, mask = tokenizer.pad(sequences)
    assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == mask.shape == (3, 3)
    assert ids.tolist() == [[1, 2, 3], [EOS, EOS, 4], [EOS, 5, 6]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    ids, mask = tokenizer.pad(sequences, side="right", pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0], [5, 6, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]


def test_pad_to_multiple_of(tokenizer):
    ids, mask = tokenizer.pad([[1, 2, 3, 4, 5]], pad_to_multiple_of=4)
    assert ids.shape == (1, 8) and mask.tolist() == [[0, 0, 0, 1, 1, 1, 1, 1]]


def test_pad_accepts_numpy_rows(tokenizer):
    ids, _ = tokenizer.pad([np.array([7, 8], dtype=np.int64), [9]])
    assert ids.tolist() == [[7, 8], [EOS, 9]]


@pytest.mark.parametrize(
    "sequences, kwargs, error, message",
    [
        ([], {}, ValueError, "sequences is empty"),
        ([[1], []], {}, ValueError, r"sequences\[1\] is empty"),
        ([[1]], {"side": "middle"}, ValueError, "side must be 'left' or 'right'"),
        ([[1, "2"]], {}, TypeError, r"sequences\[0\]\[1\] is a str"),
        ([[1]], {"pad_id": "0"}, TypeError, "pad_id must be an int"),
        ("123", {}, TypeError, "sequences must be a list of id lists"),
    ],
)
def test_pad_bad_inputs(tokenizer, sequences, kwargs, error, message):
    with pytest.raises(error, match=message):
        tokenizer.pad(sequences, **kwargs)


# --------------------------------------------------------------------------- save and load


def test_save_pretrained_round_trip_with_transformers(tokenizer, tmp_path, corpus_lines):
    transformers = pytest.importorskip("transformers")
    tokenizer.save_pretrained(tmp_path)
    assert {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"} <= {
        path.name for path in tmp_path.iterdir()
    }
    texts = HAND_TEXTS + corpus_lines[:2000] + ["Hi!<|endoftext|>Hello<|endoftext|>"]
    ours = tokenizer.encode_batch(texts)
    for hf_class in (transformers.GPT2TokenizerFast, transformers.GPT2Tokenizer):
        hf = hf_class.from_pretrained(tmp_path)
        assert hf.eos_token_id == hf.bos_token_id == EOS and len(hf) == 50257
        assert _mismatches(texts, [hf.encode(text) for text in texts], ours)[:5] == []
        ids = tokenizer.encode("Hello , world .<|endoftext|>")
        assert hf.decode(ids) == tokenizer.decode(ids)
        assert hf.decode(ids, skip_special_tokens=True) == tokenizer.decode(ids, True)
    reloaded = Tokenizer.from_pretrained(tmp_path)
    assert reloaded.encode_batch(texts) == ours


def test_from_pretrained_reads_tokenizer_json_alone(tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizer.save_pretrained(tmp_path / "slow")
    transformers.GPT2TokenizerFast.from_pretrained(tmp_path / "slow").save_pretrained(tmp_path / "fast")
    only_json = tmp_path / "only-json"
    only_json.mkdir()
    shutil.copy(tmp_path / "fast" / "tokenizer.json", only_json)
    reloaded = Tokenizer.from_pretrained(only_json)
    assert reloaded.encode_batch(HAND_TEXTS) == tokenizer.encode_batch(HAND_TEXTS)
    assert reloaded.eos_token_id == EOS


def test_from_files(gpt2_dir, tokenizer):
    loaded = Tokenizer.from_files(gpt2_dir / "vocab.json", gpt2_dir / "merges.txt")
    assert loaded.encode("Hello world") == [15496, 995]
    with pytest.raises(TokenizerError, match="not found"):
        Tokenizer.from_files(gpt2_dir / "missing.json", gpt2_dir / "merges.txt")


def test_local_directory_errors(tmp_path):
    with pytest.raises(TokenizerError, match="neither vocab.json"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(TokenizerError, match="is a file"):
        Tokenizer.from_pretrained(tmp_path / "file.txt")
    with pytest.raises(TypeError, match="path_or_hub_id must be a str or path, got int"):
        Tokenizer.from_pretrained(123)


# --------------------------------------------------------------------------- hub cache


COMMIT = HUB_COMMIT


def _fake_hub_cache(root: Path, source: Path, repo_id: str, files: list[str]) -> Path:
    """Lay out `root` like huggingface_hub's cache holding `files` of `repo_id` at main."""
    fill_hub_cache(root, repo_id, [source / name for name in files])
    return root


@pytest.fixture
def hub_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_hub_id_from_offline_cache(gpt2_dir, tmp_path, hub_offline):
    cache = _fake_hub_cache(tmp_path, gpt2_dir, "microsoft/DialoGPT-small", ["vocab.json", "merges.txt"])
    loaded = Tokenizer.from_pretrained("microsoft/DialoGPT-small", cache_dir=cache)
    assert loaded.encode("Hello world") == [15496, 995] and loaded.eos_token_id == EOS
    by_commit = Tokenizer.from_pretrained("microsoft/DialoGPT-small", cache_dir=cache, revision=COMMIT)
    assert by_commit.encode("Hello world") == [15496, 995]


def test_hub_missing_repo_offline_raises(tmp_path, hub_offline):
    with pytest.raises(TokenizerError, match="microsoft/DialoGPT-nonexistent.*offline"):
        Tokenizer.from_pretrained("microsoft/DialoGPT-nonexistent", cache_dir=tmp_path)


def test_hub_repo_without_tokenizer_files_raises(gpt2_dir, tmp_path, hub_offline):
    cache = _fake_hub_cache(tmp_path, gpt2_dir, "someone/vocab-only", ["vocab.json"])
    with pytest.raises(TokenizerError, match="neither vocab.json"):
        Tokenizer.from_pretrained("someone/vocab-only", cache_dir=cache)


def test_invalid_hub_id_raises(tmp_path, hub_offline):
    with pytest.raises(TokenizerError, match="neither a local directory nor a valid hub id"):
        Tokenizer.from_pretrained("not//a valid id", cache_dir=tmp_path)


def test_tokenizer_module_does_not_load_tensorflow():
    program = (
        "import sys; import tfdialogpt.tokenizer; "
        "loaded = [name for name in ('tensorflow', 'keras') if name in sys.modules]; "
        "assert not loaded, loaded"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        env=_env_with_repo_on_path(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def _env_with_repo_on_path(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def test_hf_hub_offline_environment_variable(gpt2_dir, tmp_path):
    """`HF_HUB_OFFLINE=1` set before import is honoured (checked in a fresh process)."""
    cache = _fake_hub_cache(tmp_path, gpt2_dir, "microsoft/DialoGPT-small", ["vocab.json", "merges.txt"])
    program = f"""
from tfdialogpt.tokenizer import Tokenizer, TokenizerError
tokenizer = Tokenizer.from_pretrained("microsoft/DialoGPT-small", cache_dir={str(cache)!r})
assert tokenizer.encode("Hello world") == [15496, 995]
try:
    Tokenizer.from_pretrained("microsoft/DialoGPT-missing", cache_dir={str(cache)!r})
except TokenizerError as error:
    assert "offline" in str(error), error
else:
    raise AssertionError("no TokenizerError")
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", program],
        env=_env_with_repo_on_path(HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_unreachable_hub_is_reported(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("connection error and no cached file")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(TokenizerError, match="vocab.json.*unreachable"):
        Tokenizer.from_pretrained("microsoft/DialoGPT-small", cache_dir=tmp_path, local_files_only=False)


# One meaning of `local_files_only` (tfdialogpt.hub), the same as for checkpoints.


def test_local_files_only_with_an_empty_cache(tmp_path, hub_online):
    expected = (
        f"hub repository 'microsoft/DialoGPT-small' in the local hub cache {tmp_path} "
        "(offline mode: local_files_only=True) has neither vocab.json + merges.txt nor tokenizer.json"
    )
    with pytest.raises(TokenizerError, match=re.escape(expected) + "$"):
        Tokenizer.from_pretrained("microsoft/DialoGPT-small", cache_dir=tmp_path, local_files_only=True)


def test_hf_hub_offline_overrides_the_default_local_files_only(tmp_path, monkeypatch):
    """With HF_HUB_OFFLINE=1, `local_files_only=False` (the default) reads the cache only: a
    missing repository is reported as not cached, not as an unreachable hub."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "default-cache"))
    expected = (
        f"hub repository 'microsoft/DialoGPT-small' in the local hub cache {tmp_path / 'default-cache'} "
        "(offline mode: HF_HUB_OFFLINE is set) has neither vocab.json + merges.txt nor tokenizer.json"
    )
    for kwargs in ({}, {"local_files_only": False}):
        with pytest.raises(TokenizerError, match=re.escape(expected) + "$"):
            Tokenizer.from_pretrained("microsoft/DialoGPT-small", **kwargs)


def test_local_files_only_reads_a_filled_cache(gpt2_dir, tmp_path, hub_online):
    cache = _fake_hub_cache(tmp_path, gpt2_dir, "someone/gpt2-json", ["vocab.json", "merges.txt"])
    loaded = Tokenizer.from_pretrained("someone/gpt2-json", cache_dir=cache, local_files_only=True)
    assert loaded.encode("Hello world") == [15496, 995]


def test_unknown_repository_is_reported(tmp_path, monkeypatch, hub_online):
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    def not_found(*args, **kwargs):
        raise RepositoryNotFoundError("401 Client Error\n\nRepository Not Found for url: ...")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", not_found)
    expected = (
        "no repository 'someone/private' on the hub (or it is private or gated and no valid token "
        "was given): 401 Client Error"
    )
    with pytest.raises(TokenizerError, match="^" + re.escape(expected) + "$"):
        Tokenizer.from_pretrained("someone/private", cache_dir=tmp_path)
