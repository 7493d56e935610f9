"""The export command's options, without TensorFlow: `tfdialogpt export` and
`python -m tfdialogpt.serving.export` share them, and `tfdialogpt --help` stays fast."""

from __future__ import annotations

from tfdialogpt.quantization import MODES
from tfdialogpt.serving import signatures as contract


def add_export_arguments(parser, model_default: str | None = None) -> None:
    """Adds the export options to `parser`; `--model` is required unless given a default."""
    if model_default is None:
        parser.add_argument("--model", required=True, help="checkpoint directory, hub id, or 'default'")
    else:
        parser.add_argument("--model", default=model_default, help="directory, hub id, or 'default'")
    parser.add_argument(
        "--tokenizer", default=None, help="the tokenizer built into the chat signatures (default: the model's own)"
    )
    parser.add_argument("--base-path", required=True, help="the model's base directory; <version>/ is written under it")
    parser.add_argument("--version", type=int, default=None, help="version number (default: the next one)")
    parser.add_argument("--model-name", default="dialogpt", help="model name written into the warmup requests")
    parser.add_argument(
        "--max-new-tokens-cap",
        type=int,
        default=contract.DEFAULT_MAX_NEW_TOKENS_CAP,
        help="most new tokens one request may ask for",
    )
    parser.add_argument("--warmup-batch-sizes", type=int, nargs="+", default=[1], help="batch sizes to warm up")
    parser.add_argument("--no-xla", action="store_true", help="leave out the XLA signatures (generate_xla, chat_xla)")
    parser.add_argument("--quantize", choices=MODES, default=None, help="export int8 weights (faster on CPU)")
