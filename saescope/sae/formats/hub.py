"""SAEs on the Hugging Face hub, named `hf:OWNER/REPO[@REVISION][/PATH]`.

    hf:EleutherAI/sae-pythia-70m-32k/layers.3                  a sparsify hookpoint folder
    hf:jbloom/GPT2-Small-SAEs-Reformatted/blocks.8.hook_resid_pre   a SAELens folder
    hf:OWNER/REPO@v1.0/sae                                      at a tag, branch or commit

`fetch(name, hookpoint)` downloads only the files of the SAE named (PATH, or
PATH/HOOKPOINT, or the repository's top level) into the Hugging Face cache
(`HF_HOME` / `HF_HUB_CACHE` as usual) and returns the local file or folder;
`detect_format` calls it, so every reader of an SAE file takes a hub name
(`saescope convert --src hf:...`, `steer --sae hf:...`, `load_sae("hf:...")`).
A repository with one SAE per folder and no PATH is refused with its folders
listed. With `HF_HUB_OFFLINE=1`, or no network, the cached copy is used, and a
name that is not in the cache is refused as such.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import NamedTuple

from saescope import paths
from saescope.errors import SaescopeError, describe
from saescope.paths import HUB_PREFIX as PREFIX

# the config and weights files of the folder formats load_sae reads
_CONFIGS = (paths.SAELENS_CFG, paths.NATIVE_SAE_CONFIG)
_WEIGHTS = (paths.SAELENS_WEIGHTS, paths.NATIVE_SAE_WEIGHTS, paths.BATCHTOPK_WEIGHTS)
_TOP_LEVEL_ONLY = "*/*"  # an ignore pattern: files in sub-folders


class HubName(NamedTuple):
    repo_id: str  # OWNER/REPO
    revision: str | None  # None: the default branch
    path: str  # inside the repository ("" for its top level)

    def __str__(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"{PREFIX}{self.repo_id}{at}" + (f"/{self.path}" if self.path else "")


def is_hub_name(name: str | Path) -> bool:
    return str(name).startswith(PREFIX)


def parse(name: str | Path) -> HubName:
    """`hf:OWNER/REPO[@REVISION][/PATH]` (also `hf://...`, and what `Path()` makes of it)."""
    rest = str(name).removeprefix(PREFIX).lstrip("/")
    parts = [p for p in rest.split("/") if p]
    if len(parts) < 2:
        raise SaescopeError(
            f"{name} does not name a hub repository; write hf:OWNER/REPO[/PATH], e.g. "
            "hf:EleutherAI/sae-pythia-70m-32k/layers.3"
        )
    owner, repo = parts[0], parts[1]
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
        if not repo or not revision:
            raise SaescopeError(f"{name}: write a revision as hf:OWNER/REPO@REVISION/PATH")
    path = str(PurePosixPath(*parts[2:])) if len(parts) > 2 else ""
    if ".." in parts[2:]:
        raise SaescopeError(f"{name}: a path inside the repository cannot hold '..'")
    return HubName(f"{owner}/{repo}", revision, path)


def _snapshot(hub: HubName, allow: list[str] | None, ignore: list[str] | None) -> Path:
    """The local snapshot folder after fetching the files `allow` matches (cached ones
    only when offline)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:
        raise SaescopeError(
            f"reading {hub} needs the huggingface_hub package: pip install huggingface_hub"
        ) from exc
    try:
        folder = snapshot_download(
            hub.repo_id, revision=hub.revision, allow_patterns=allow, ignore_patterns=ignore
        )
    except GatedRepoError as exc:
        raise SaescopeError(
            f"{hub}: the repository is gated; accept its terms on the hub and log in "
            "(`hf auth login` or HF_TOKEN)"
        ) from exc
    except RevisionNotFoundError as exc:
        raise SaescopeError(f"{hub}: the repository has no revision {hub.revision!r}") from exc
    except RepositoryNotFoundError as exc:
        raise SaescopeError(
            f"{hub}: no repository {hub.repo_id} on the hub (or it is private: log in with "
            "`hf auth login` or set HF_TOKEN)"
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise SaescopeError(
            f"{hub} is not in the local Hugging Face cache, and the hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE is set); fetch it once with network"
        ) from exc
    except Exception as exc:  # network failures, an incomplete cached snapshot
        raise SaescopeError(f"cannot fetch {hub}: {describe(exc)}") from exc
    return Path(str(folder))


def _sae_folders(root: Path) -> list[str]:
    """Folders below `root` holding an SAE config (relative, sorted)."""
    found = {str(p.parent.relative_to(root)) for name in _CONFIGS for p in root.rglob(name)}
    return sorted(found - {"."})


def fetch(name: str | Path, hookpoint: str | None = None) -> Path:
    """The local copy of the SAE a hub name gives (see the module docstring)."""
    hub = parse(name)
    if hookpoint:
        hub = hub._replace(path=str(PurePosixPath(hub.path or ".", hookpoint)))
    if hub.path:
        local = _snapshot(hub, [hub.path, f"{hub.path}/*"], None) / hub.path
        if not local.exists():
            raise SaescopeError(
                f"{hub}: the repository has no file or folder {hub.path!r}"
                + (" in the local cache (offline)" if _offline() else "")
            )
        return local
    local = _snapshot(hub, None, [_TOP_LEVEL_ONLY])
    # an SAE at the top level has its weights there (a training folder pushed whole has
    # only its run's config.json there, and one folder per hookpoint)
    if any((local / w).is_file() for w in _WEIGHTS) or any(local.glob("*.pth")):
        return local
    configs = _snapshot(hub, [f"*/{c}" for c in _CONFIGS], None)
    subs = _sae_folders(configs)
    if len(subs) == 1:
        return fetch(str(hub._replace(path=subs[0])))
    if subs:
        shown = ", ".join(subs[:12]) + (f" and {len(subs) - 12} more" if len(subs) > 12 else "")
        raise SaescopeError(
            f"{hub} holds one SAE per folder ({shown}); name one: {hub}/{subs[0]} "
            "(or pass the folder as --hookpoint)"
        )
    raise SaescopeError(f"{hub}: no SAE config (cfg.json or config.json) in the repository")


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)
