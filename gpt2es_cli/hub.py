"""Hugging Face Hub model ids wherever a CHECKPOINT (or a tokenizer source) is accepted.

`DeepESP/gpt2-spanish`, `datificate/gpt2-small-spanish` or `openai-community/gpt2` (optionally
`@REVISION`: a branch, tag or commit) that is not a local path is resolved with
`huggingface_hub.snapshot_download`: the local cache first, the Hub only when the files are
not cached, and never with HF_HUB_OFFLINE=1. Only what gpt2es reads is fetched (config.json,
the weights, the tokenizer files), and the result is a local snapshot directory, opened like any
Hugging Face directory (hf/). Every failure (offline and not cached, an unknown repo or
revision, no network) is one line saying what to do.
"""

from __future__ import annotations

import re
from pathlib import Path

from gpt2es_cli.errors import CheckpointError, ConfigError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?$")
MODEL_FILES = ["config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
               "pytorch_model*.bin", "pytorch_model.bin.index.json", "tokenizer.json", "tokenizer_config.json",
               "vocab.json", "merges.txt", "special_tokens_map.json"]
"""What a snapshot fetches: a model's config, weights and tokenizer, nothing else (no TF/Flax/ONNX)."""
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"]
"""What a snapshot for its tokenizer alone fetches."""


def is_hub_id(text: str | Path) -> bool:
    """Whether `text` is `owner/name[@revision]` and no local path of that name exists."""
    text = str(text)
    return bool(HUB_ID.match(text)) and not Path(text).exists()


def split_id(text: str) -> tuple[str, str | None]:
    """'owner/name@rev' -> ('owner/name', 'rev'); no revision: None (the main branch)."""
    repo, _, revision = text.partition("@")
    return repo, revision or None


def with_revision(text: str | Path, revision: str | None, option: str = "--revision") -> str:
    """`text` at `revision`: 'owner/name' + 'v2' -> 'owner/name@v2' (`text` unchanged when no
    revision is given). A revision is for Hub model ids only, and must agree with one in `text`."""
    if revision is None:
        return str(text)
    if not re.fullmatch(r"[\w./-]+", revision):
        raise ConfigError(f"{option} {revision!r} is not a branch, tag or commit name")
    if not is_hub_id(text):
        raise ConfigError(f"{option} is for a Hugging Face Hub model id (owner/name), not {text}: drop it")
    repo, own = split_id(str(text))
    if own is not None and own != revision:
        raise ConfigError(f"{text} names revision {own} and {option} {revision}: give one of them")
    return f"{repo}@{revision}"


def snapshot(text: str, files: list[str] | None = None) -> Path:
    """The local snapshot directory of Hub model `text` (owner/name[@revision]): cached, or fetched;
    `files`: the patterns to fetch (MODEL_FILES by default)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, revision = split_id(text)
    at = f" at revision {revision}" if revision else ""
    try:
        return Path(snapshot_download(repo_id=repo, revision=revision, allow_patterns=files or MODEL_FILES))
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{repo}{at} is not in the Hugging Face cache and the Hub cannot be reached (offline, or no "
            f"network): download it where there is network (`hf download {repo}`, then copy the cache), or "
            "pass a local directory"
        ) from None
    except GatedRepoError:
        raise CheckpointError(f"{repo} is gated on the Hub: accept its terms there and log in (`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{repo} is not a model on the Hugging Face Hub (or it is private): check the id, or log in "
            "with `hf auth login`; a local path of that name does not exist either"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{repo} has no revision {revision!r}: use a branch, tag or commit it has") from None
    except (OSError, ValueError) as e:  # connection errors, a cache that cannot be written
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot fetch {repo}{at} from the Hugging Face Hub ({first})") from None


# --- pushing ------------------------------------------------------------------------------------


def check_push_target(repo_id: str) -> None:
    """Refuse, before any work, a push that cannot happen: a malformed repo id, no token, offline."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if "/" not in repo_id or "@" in repo_id:
        raise CheckpointError(f"--push-to-hub {repo_id!r}: give a repo id as owner/name (your user or organisation)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise CheckpointError(f"--push-to-hub {repo_id!r} is not a valid repo id ({str(e).splitlines()[0]})") from None
    if constants.HF_HUB_OFFLINE:
        raise CheckpointError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set, so nothing can be uploaded: unset it")
    if get_token() is None:
        raise CheckpointError(
            f"--push-to-hub {repo_id} needs a Hugging Face token with write access: log in with `hf auth login` "
            "or set HF_TOKEN"
        )


def push_folder(folder: Path, repo_id: str, private: bool = False, message: str = "Upload from gpt2es") -> str:
    """Create `repo_id` if needed (a model repo) and upload `folder` to it; return the repo's URL.
    Every failure is one line saying the local folder is intact."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=message)
    except Exception as e:  # HTTP, network, permission, rate limits: one line, the export stays
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"could not upload {folder} to {repo_id} ({first}); the local copy is intact: retry with "
            f"`hf upload {repo_id} {folder}` or gpt2es export --push-to-hub"
        ) from None
    return str(url)
