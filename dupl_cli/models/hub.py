"""Hugging Face Hub names (``hf-hub:org/name`` or ``hf-hub:org/name@revision``) to local files.

The hub cache is looked at first, without the network (``snapshot_download(local_files_only=True)``);
only what is not there is downloaded, and not at all when ``HF_HUB_OFFLINE`` is set. Needs the
``hub`` extra (``huggingface_hub``); without it, one line names the install.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from dupl_cli.core.errors import UserError

HUB_PREFIX = "hf-hub:"
HUB_INSTALL = 'pip install "dupl[hub]"'
_REPO = re.compile(r"[\w.-]+/[\w.-]+(@[\w./-]+)?")


def is_hub_name(text: object) -> bool:
    return str(text).startswith(HUB_PREFIX)


def split_hub_name(name: str) -> tuple[str, str | None]:
    """``hf-hub:org/name@rev`` -> (``org/name``, ``rev`` or None); a one-line error for anything else."""
    repo = str(name).removeprefix(HUB_PREFIX)
    if not _REPO.fullmatch(repo):
        raise UserError(
            f"{name!r:.120} is not a hub repository (hf-hub:org/name or hf-hub:org/name@revision)"
        )
    repo_id, _, revision = repo.partition("@")
    return repo_id, revision or None


def require_hub(what: str) -> None:
    """A one-line UserError naming the install when huggingface_hub is missing."""
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise UserError(f"{what} needs huggingface_hub (the hub extra): {HUB_INSTALL}") from None


def hub_snapshot(name: str, files: Sequence[str]) -> Path:
    """The local folder holding ``files`` of the hub repository ``name``: its cached snapshot when the
    cache has them all, else downloaded (only ``files``). One line when neither works."""
    require_hub(f"{name!r:.120}")
    from huggingface_hub import snapshot_download

    repo_id, revision = split_hub_name(name)
    wanted = dict(repo_id=repo_id, revision=revision, allow_patterns=list(files))
    try:
        folder = Path(snapshot_download(**wanted, local_files_only=True))
        if all((folder / f).is_file() for f in files):
            return folder
    except Exception:  # not in the cache; huggingface_hub raises several types for that
        pass
    try:
        folder = Path(snapshot_download(**wanted))
    except Exception as exc:  # offline, unknown repository, network errors: many types
        raise UserError(
            f"{name}: not in the hub cache and cannot be downloaded ({type(exc).__name__}); offline? "
            f"download {', '.join(files)} of https://huggingface.co/{repo_id} to a folder and give the folder"
        ) from None
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{name}: the repository has no {', '.join(missing)}")
    return folder
