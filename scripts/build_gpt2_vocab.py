"""Rebuild GPT-2's exact `vocab.json` and `merges.txt` from the `openai-whisper` sdist.

The sdist on PyPI ships GPT-2's BPE ranks as `whisper/assets/gpt2.tiktoken`; this script reads
that file straight out of the tar.gz (whisper is never installed) and writes the HF/OpenAI
layout. Logic lives in `tfdialogpt._gpt2_vocab`; this file only parses arguments and fetches.

Usage:
    python scripts/build_gpt2_vocab.py --output assets/gpt2
    python scripts/build_gpt2_vocab.py --output assets/gpt2 --sdist openai_whisper-20250625.tar.gz
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from tfdialogpt._gpt2_vocab import WHISPER_SDIST_VERSION, build_gpt2_vocab_from_sdist


def download_whisper_sdist(destination: Path, version: str = WHISPER_SDIST_VERSION) -> Path:
    """Fetch `openai-whisper==<version>`'s sdist with pip (no install, no dependencies).

    Args:
        destination: folder to save the tar.gz in.
        version: the openai-whisper release.

    Returns:
        The path of the downloaded `openai_whisper-<version>.tar.gz`.
    """
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"openai-whisper=={version}",
        "-d",
        str(destination),
    ]
    subprocess.run(command, check=True)
    found = sorted(destination.glob(f"openai*whisper-{version}.tar.gz"))
    if not found:
        raise FileNotFoundError(f"pip download left no openai-whisper-{version} sdist in {destination}")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="folder to write into")
    parser.add_argument(
        "--sdist",
        type=Path,
        default=None,
        help="a local openai-whisper sdist (.tar.gz); fetched from PyPI with pip if omitted",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        sdist = args.sdist or download_whisper_sdist(Path(scratch))
        vocab_path, merges_path = build_gpt2_vocab_from_sdist(sdist, args.output)
    print(f"wrote {vocab_path} and {merges_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
