"""``model.path`` as a local folder or a Hub-style id (``org/name``, ``org/name@revision``) already in the cache.

`resolve_model_path` is the one place a model path given by a user becomes a folder on disk:

1. an existing local folder is used as it is (a relative path such as ``runs/sft`` wins over the id of the
   same shape);
2. else, a string shaped like a Hub model id (one ``/``, optional ``@revision``: a branch, tag or commit hash)
   is looked up in the local Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``, read when called) with ``snapshot_download(local_files_only=True)``: the
   snapshot folder of the revision ``refs/<revision>`` points to (``main`` by default). Nothing is ever
   fetched over the network, whatever ``HF_HUB_OFFLINE`` says; an id that is not cached raises
   `HubModelNotCachedError` (a ``FileNotFoundError``) naming the id, the cache folder searched and the
   ``hf download`` command that fetches it on a machine with network;
3. anything else is a missing model folder (``FileNotFoundError``).

The folder returned is an ordinary model folder: loading it goes through the same checks as any other
(``config.json`` ``model_type``, safetensors weights only, no remote code). The entry points (``funrl.train``,
``funrl.eval``, ``funrl.export``, ``funrl.sft``) resolve once, before any worker starts, and hand the workers
the folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, IncompleteSnapshotError, LocalEntryNotFoundError
from huggingface_hub.utils import validate_repo_id

__all__ = ["HubId", "HubModelNotCachedError", "hub_cache_dir", "parse_hub_id", "resolve_model_path"]

_ID_SHAPE = re.compile(r"(?P<repo>[^/@\s]+/[^/@\s]+)(?:@(?P<revision>\S+))?")


@dataclass(frozen=True)
class HubId:
    """A Hub model id: ``repo_id`` (``org/name``) and the revision asked for (None = ``main``)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")

    def download_command(self) -> str:
        """The command that puts this model into the cache on a machine with network."""
        return f"hf download {self.repo_id}" + (f" --revision {self.revision}" if self.revision else "")


class HubModelNotCachedError(FileNotFoundError):
    """A Hub model id that is not (or not completely) in the local Hugging Face cache."""

    def __init__(self, message: str, hub_id: HubId, cache_dir: Path) -> None:
        super().__init__(message)
        self.hub_id = hub_id
        self.cache_dir = cache_dir


def parse_hub_id(text: str) -> HubId | None:
    """``org/name`` or ``org/name@revision`` as a `HubId`; None for anything else (a path, a bare name)."""
    match = _ID_SHAPE.fullmatch(text)
    if match is None:
        return None
    try:
        validate_repo_id(match["repo"])
    except HFValidationError:
        return None
    return HubId(match["repo"], match["revision"])


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache folder, from the environment as it is now (huggingface_hub's own order)."""
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    default = os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(
        os.path.expandvars(os.path.expanduser(home)), "hub"
    )
    return Path(os.path.expandvars(os.path.expanduser(os.environ.get("HF_HUB_CACHE") or default)))


def _cache_env() -> str:
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        if os.environ.get(name):
            return f"from {name}"
    return "the default; set HF_HUB_CACHE or HF_HOME to use another"


def _cached_revisions(cache: Path, hub_id: HubId) -> list[str]:
    repo = cache / ("models--" + hub_id.repo_id.replace("/", "--"))
    names = [p.relative_to(repo / "refs").as_posix() for p in (repo / "refs").rglob("*") if p.is_file()]
    names += [p.name for p in (repo / "snapshots").glob("*") if p.is_dir()]
    return sorted(set(names))


def _not_cached(key: str, hub_id: HubId, cache: Path, incomplete: str | None) -> HubModelNotCachedError:
    if incomplete:
        state = f"is only partly in the local Hugging Face cache {cache} ({_cache_env()}): {incomplete}"
    else:
        cached = _cached_revisions(cache, hub_id)
        state = f"is not in the local Hugging Face cache {cache} ({_cache_env()})" + (
            f"; the cache holds other revisions of it: {', '.join(cached)}" if cached else ""
        )
    return HubModelNotCachedError(
        f"{key} {str(hub_id)!r}: no such local folder, and the Hub model {hub_id.repo_id} (revision "
        f"{hub_id.revision or 'main'}) {state}. FunRL never downloads: fetch it on a machine with network with "
        f"`{hub_id.download_command()}` (into this cache, or copy the cache folder here), or set {key} to a "
        "local model folder",
        hub_id,
        cache,
    )


def resolve_model_path(path_or_id: str | os.PathLike[str], key: str = "model.path") -> Path:
    """The local model folder ``path_or_id`` names: an existing folder, or a cached Hub id's snapshot folder.

    ``key``: the config key or option the value came from (named in errors). Never uses the network.
    """
    text = os.fspath(path_or_id)
    if not text.strip():
        raise FileNotFoundError(
            f"{key} is empty: give a local model folder or a Hub model id (org/name) that is in "
            "the local Hugging Face cache"
        )
    folder = Path(text).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise FileNotFoundError(f"{key} {text}: a file, not a model folder (a folder with a config.json)")
    hub_id = parse_hub_id(text)
    if hub_id is None:
        raise FileNotFoundError(
            f"model folder {folder} does not exist ({key}: no such folder, and not a Hub "
            "model id of the form org/name or org/name@revision)"
        )
    cache = hub_cache_dir()
    try:
        snapshot = snapshot_download(hub_id.repo_id, revision=hub_id.revision, cache_dir=cache, local_files_only=True)
    except LocalEntryNotFoundError as exc:  # not cached, or cached incompletely (IncompleteSnapshotError)
        incomplete = str(exc) if isinstance(exc, IncompleteSnapshotError) else None
        raise _not_cached(key, hub_id, cache, incomplete) from None
    return Path(snapshot)
