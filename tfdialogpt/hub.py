"""Hugging Face hub resolution, shared by checkpoints and tokenizers.

A hub id (`"microsoft/DialoGPT-small"`) is resolved file by file with
`huggingface_hub.hf_hub_download`: downloads show its progress bar and land in its cache
(`cache_dir`, else `HF_HUB_CACHE`).

`local_files_only` has one meaning everywhere in tfdialogpt (`DialoGPT.from_pretrained`,
`checkpoint.load_pretrained`, `checkpoint.load_config`, `Tokenizer.from_pretrained`), the
meaning huggingface_hub and transformers give it:
- `True`: read the local hub cache only, never the network;
- `False` (the default): use the hub, unless `HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE=1`)
  is set, which makes it the same as `True`. The setting is read at each call, so changing
  `huggingface_hub.constants.HF_HUB_OFFLINE` after import takes effect.
`None` (the tokenizer's former default) is taken as `False`.

Offline, a file that is not in the cache counts as absent, and the caller's "could not find"
error says it looked in the cache only, and why. Every other failure (an invalid id, an unknown
repository or revision, an unreachable hub) is one `HubError` with a one-line message naming
the repository; `checkpoint` and `tokenizer` re-raise it as their own error type.

This module imports neither TensorFlow nor, until a function needs it, huggingface_hub.
"""

from __future__ import annotations

import os
from pathlib import Path


class HubError(ValueError):
    """A hub id that cannot be resolved: invalid, unknown, unreachable, or lacking a file."""


def is_offline(local_files_only: bool | None = False) -> bool:
    """Whether the hub must not be contacted: `local_files_only`, or `HF_HUB_OFFLINE` set."""
    from huggingface_hub import constants

    return bool(local_files_only) or bool(constants.HF_HUB_OFFLINE)


def _first_line(error: BaseException) -> str:
    # huggingface_hub's HTTP errors span several lines; the CLI prints errors on one.
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class HubRepo:
    """One hub repository at one revision, resolved online or from the cache only.

    Args:
        repo_id: `"owner/name"`.
        cache_dir: hub cache directory; defaults to huggingface_hub's (`HF_HUB_CACHE`).
        revision: branch, tag or commit; defaults to `main`.
        token: passed to huggingface_hub (private or gated repositories).
        local_files_only: see the module docstring; fixed (with `HF_HUB_OFFLINE`) when the
            repo is made.

    Example:
        >>> repo = HubRepo("microsoft/DialoGPT-small", local_files_only=True)
        >>> repo.download("config.json")  # a Path in the cache, or None  # doctest: +SKIP
    """

    def __init__(
        self,
        repo_id: str,
        *,
        cache_dir: str | os.PathLike | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        local_files_only: bool | None = False,
    ):
        if local_files_only is not None and not isinstance(local_files_only, bool):
            raise TypeError(f"local_files_only must be True or False, got {local_files_only!r}")
        self.repo_id, self.cache_dir, self.revision, self.token = repo_id, cache_dir, revision, token
        self.offline = is_offline(local_files_only)
        self._offline_reason = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE is set"

    def describe(self) -> str:
        """`'owner/name' at revision 'v1' on the hub`, or `... in the local hub cache <dir>
        (offline mode: <why>)`: where a missing file was looked for."""
        where = repr(self.repo_id) + (f" at revision {self.revision!r}" if self.revision else "")
        if not self.offline:
            return where + " on the hub"
        from huggingface_hub import constants

        cache = os.fspath(self.cache_dir) if self.cache_dir is not None else constants.HF_HUB_CACHE
        return f"{where} in the local hub cache {cache} (offline mode: {self._offline_reason})"

    def not_found(self, what: str) -> HubError:
        """The error for a file (or set of files) this repository does not have."""
        return HubError(f"could not find {what} for {self.describe()}")

    def download(self, filename: str) -> Path | None:
        """The local path of `filename` (downloaded or cached), or None when the repository
        does not have it (offline: when the cache does not).

        Raises:
            HubError: an invalid id, an unknown repository or revision, a refused token, or
                (online) an unreachable hub with the file not cached.
        """
        import huggingface_hub
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            return Path(
                huggingface_hub.hf_hub_download(
                    self.repo_id,
                    filename,
                    cache_dir=self.cache_dir,
                    revision=self.revision,
                    token=self.token,
                    local_files_only=self.offline,
                )
            )
        except HFValidationError as err:
            raise HubError(
                f"{self.repo_id!r} is neither a local directory nor a valid hub id: {_first_line(err)}"
            ) from None
        except LocalEntryNotFoundError as err:  # before EntryNotFoundError: it is one
            if self.offline:
                return None
            raise HubError(
                f"cannot fetch {filename} for {self.describe()}: the hub is unreachable and the file "
                f"is not in the local cache ({_first_line(err)})"
            ) from None
        except EntryNotFoundError:
            return None
        except RepositoryNotFoundError as err:  # also gated and private repositories
            raise HubError(
                f"no repository {self.describe()} (or it is private or gated and no valid token was "
                f"given): {_first_line(err)}"
            ) from None
        except RevisionNotFoundError as err:
            raise HubError(f"no such revision: {self.describe()} ({_first_line(err)})") from None
        except (HfHubHTTPError, OSError) as err:  # other HTTP errors, proxies, certificates, disk
            raise HubError(f"cannot fetch {filename} for {self.describe()}: {_first_line(err)}") from None
