"""Which files a scan reads: the files given, and LoRA / checkpoint files found under given directories.

A symbolic link found under a given directory is followed only when it stays inside that directory
(as the Hugging Face cache's ``snapshots/<rev>/x -> ../../blobs/<hash>`` does when the cache root is
scanned), or when ``follow_links`` is set; otherwise it is reported as not followed (LA004).
Directory links are never descended into. A path given directly is read wherever it points.

A Hugging Face hub cache (a folder of ``models--org--name`` repos) is read with huggingface_hub's own
``scan_cache_dir``: every file gets its repo id, revision (commit), refs and blob. ``hf://org/name[@rev]``
(or ``org/name[@rev]`` when no such path exists) names a repo in the local cache (``HF_HUB_CACHE``);
nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

from lora_audit.errors import InputError, NothingToScanError, UsageError
from lora_audit.weights.pickle_file import PICKLE_SUFFIXES

SCANNED_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


@dataclass
class Collection:
    """The files to scan, in order, and the links found that point out of their directory."""

    files: list[str] = field(default_factory=list)
    not_followed: list[str] = field(default_factory=list)  # links out of the scanned tree (LA004)
    hub: dict[str, dict] = field(default_factory=dict)  # path -> repo_id, revision, refs, blob (HF cache files)

    def shard(self, index: int, count: int) -> "Collection":
        """Shard ``index`` (1-based) of ``count``: each path goes to one shard, by a hash of the path
        itself, so the same batch splits the same way on every machine and the shards' union is it."""
        if not 1 <= index <= count:
            raise InputError("shard", f"{index}/{count}", "must be i/n with 1 <= i <= n")
        mine = {p for p in self.files + self.not_followed if _shard_of(p, count) == index - 1}
        return Collection([p for p in self.files if p in mine], [p for p in self.not_followed if p in mine],
                          {p: h for p, h in self.hub.items() if p in mine})


def collect_files(paths: list[str], follow_links: bool = False) -> Collection:
    """Files given directly, plus LoRA / checkpoint files found recursively in given directories.

    Paths stay as given (never made absolute). A missing path is kept so that it becomes an
    error record; raises NothingToScanError when nothing at all is left.
    """
    found = Collection()
    for path in paths:
        if _hub_reference(path):
            _collect_hub(found, path)
        elif not os.path.isdir(path):
            found.files.append(path)
        else:
            if _is_hub_cache(path):  # its repos through huggingface_hub; anything else in it as a folder
                _collect_cache(found, path)
            _walk(found, path, follow_links, skip=_CACHE_REPOS)
    seen: set[str] = set()
    found.files = [p for p in found.files if not (p in seen or seen.add(p))]  # a path given twice is one file
    if not found.files and not found.not_followed:
        raise NothingToScanError(f"no .safetensors or checkpoint files found in {', '.join(paths) or 'the given paths'}")
    return found


def _walk(found: Collection, path: str, follow_links: bool, skip: tuple[str, ...] = ()) -> None:
    """LoRA files under ``path``, not descending into top-level folders whose names start with ``skip``."""
    root = os.path.realpath(path)
    for directory, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not (directory == path and d.startswith(skip)))
        for name in sorted(names):
            if not name.lower().endswith(SCANNED_SUFFIXES):
                continue
            file = os.path.join(directory, name)
            if follow_links or not os.path.islink(file):  # os.walk enters no linked folder: only a link leads out
                found.files.append(file)
            else:
                inside = os.path.commonpath([root, os.path.realpath(file)]) == root
                (found.files if inside else found.not_followed).append(file)


def _shard_of(path: str, count: int) -> int:
    return int.from_bytes(hashlib.sha1(path.encode("utf-8", "surrogateescape")).digest()[:8], "big") % count


_REPO = re.compile(r"^(?:hf://)?([\w.-]+/[\w.-]+)(?:@([\w./-]+))?$")


def _hub_reference(path: str) -> bool:
    """``hf://org/name[@rev]``, or ``org/name[@rev]`` that is not a path on disk but a repo in the local cache
    (a mistyped local path stays a missing file)."""
    if path.startswith("hf://"):
        return True
    match = None if os.path.exists(path) or path.lower().endswith(SCANNED_SUFFIXES) else _REPO.match(path)
    return match is not None and match.group(1) in _cached_repo_ids()


def _cached_repo_ids() -> set[str]:
    from huggingface_hub import constants

    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    return {r.repo_id for r in _scan_cache(cache).repos} if os.path.isdir(cache) else set()


_CACHE_REPOS = ("models--", "datasets--", "spaces--")  # a hub cache's repo folders


def _is_hub_cache(path: str) -> bool:
    try:
        return any(e.is_dir() and e.name.startswith(_CACHE_REPOS) for e in os.scandir(path))
    except OSError:
        return False


def _scan_cache(cache: str):
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        return scan_cache_dir(cache)
    except CacheNotFound:
        raise UsageError(f"{cache} is not a Hugging Face hub cache") from None


def _add_revision(found: Collection, repo, revision) -> None:
    for cached in sorted(revision.files, key=lambda f: str(f.file_path)):
        if cached.file_name.lower().endswith(SCANNED_SUFFIXES):
            path = str(cached.file_path)
            found.files.append(path)
            found.hub[path] = {"repo_id": repo.repo_id, "repo_type": repo.repo_type,
                               "revision": revision.commit_hash, "refs": sorted(revision.refs),
                               "blob": str(cached.blob_path)}


def _collect_cache(found: Collection, cache: str) -> None:
    """Every LoRA / checkpoint file of every revision in the hub cache ``cache``."""
    for repo in sorted(_scan_cache(cache).repos, key=lambda r: (r.repo_type, r.repo_id)):
        for revision in sorted(repo.revisions, key=lambda r: r.commit_hash):
            _add_revision(found, repo, revision)


def _collect_hub(found: Collection, reference: str) -> None:
    """The files of one cached repo revision: ``@rev`` a ref or a commit (prefix); default the "main" ref."""
    from huggingface_hub import constants

    match = _REPO.match(reference)
    if match is None:
        raise UsageError(f"{reference} is not hf://org/name[@revision]")
    repo_id, wanted = match.group(1), match.group(2) or "main"
    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    repos = [r for r in _scan_cache(cache).repos if r.repo_id == repo_id] if os.path.isdir(cache) else []
    if not repos:
        raise UsageError(f"{reference} is not in the local Hugging Face cache ({cache}); "
                         "lora-audit never downloads: fetch it with huggingface_hub first")
    revisions = [rev for repo in repos for rev in repo.revisions
                 if wanted in rev.refs or rev.commit_hash.startswith(wanted)]
    if len(revisions) != 1:
        known = sorted({ref for repo in repos for rev in repo.revisions for ref in rev.refs})
        raise UsageError(f"{reference} matches {len(revisions)} cached revisions of {repo_id} "
                         f"(refs: {', '.join(known) or 'none'}); give @<ref> or @<commit>")
    repo = next(r for r in repos if revisions[0] in r.revisions)
    _add_revision(found, repo, revisions[0])
