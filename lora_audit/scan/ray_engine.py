"""The scan of a batch on a Ray cluster (``scan --engine ray``): the local engine's per-file functions, on Ray.

Files go to Ray tasks in chunks (one CPU each): the hashes of those that may be copies, then the static checks
(:func:`~lora_audit.scan.engine.scan_file`). With the identity check, each chunk's static results go
on to a small pool of actors, each holding its own copy of the check (the models load once per
actor) and adding its findings (:func:`~lora_audit.scan.engine.attack_chunk`): one actor per GPU
when the cluster has GPUs, else one per CPU but one, which is left to the static tasks. At most a few
chunks per worker are in flight, and their results come back in input order.

Workers read the files at the paths as given, from the driver's working directory where their node
has it: on a cluster, the files (and the reconstructions' folder) must be on a filesystem every node
mounts at the same path. Ray is imported only inside these functions: a local scan never loads it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections import deque
from typing import Iterator

from lora_audit.errors import UsageError
from lora_audit.results import FileResult
from lora_audit.scan.check import Check
from lora_audit.scan.content import file_sha256
from lora_audit.scan.engine import ScanOptions, attack_chunk, scan_file

INSTALL = "pip install 'lora-privacy-audit[ray]'"
STATIC_CHUNK = 64  # files per static task, at most (fewer when a batch is small for the cluster)
ATTACK_CHUNK = 8  # files per chunk when the identity check runs: an attack takes seconds per file
IN_FLIGHT = 4  # chunks in flight per worker


@contextlib.contextmanager
def ray_engine(address: str | None = None, *, actors: int | None = None, logging_level: int = logging.WARNING,
               **local) -> Iterator[RayEngine]:
    """A :class:`RayEngine` on the cluster at ``address`` (None: ``RAY_ADDRESS``, else a local Ray started
    here; ``"auto"``: the one ``ray start`` runs on this machine). ``local``: ``ray.init`` arguments of a
    local Ray (e.g. ``num_cpus``). A Ray session this process already holds is used as it is and left
    open; one opened here is closed at the end, which stops only a Ray it started."""
    ray = _ray()
    if ray.is_initialized():
        yield RayEngine(actors)
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    started = {"include_dashboard": False, **local} if address == "local" else {}
    with _signal_handlers_kept():
        ray.init(address=address, log_to_driver=False, logging_level=logging_level, **started)
    try:
        yield RayEngine(actors)
    finally:
        ray.shutdown()


class RayEngine:
    """The :class:`~lora_audit.scan.engine.ScanEngine` on the connected Ray cluster. ``actors``: how many
    identity actors (default: one per GPU, else one per CPU but one; never more than the chunks)."""

    def __init__(self, actors: int | None = None):
        self.actors = actors

    def digests(self, files: list[str]) -> list[str | None]:
        """The SHA-256 of each file, in order, hashed by tasks on the cluster."""
        ray, cwd = _ray(), os.getcwd()
        workers = _cpus()
        task = ray.remote(_digest_chunk)
        refs = (task.remote(chunk, cwd) for chunk in _chunks(files, workers, STATIC_CHUNK))
        return [digest for part in _in_order(refs, IN_FLIGHT * workers) for digest in part]

    def scan(self, files: list[str], options: ScanOptions, identity: Check | None = None,
             digests: dict[str, str | None] | None = None) -> Iterator[FileResult]:
        """Each file's result, in input order. ``digests``: the SHA-256 of files hashed already (the
        others are hashed by the task that scans them)."""
        ray, cwd, digests = _ray(), os.getcwd(), digests or {}
        static = ray.remote(_scan_chunk)
        files = [(path, digests.get(path)) for path in files]
        if identity is None:
            workers = _cpus()
            refs = (static.remote(chunk, options, cwd) for chunk in _chunks(files, workers, STATIC_CHUNK))
            for results in _in_order(refs, IN_FLIGHT * workers):
                yield from results
            return
        count, resources = _attackers(ray.cluster_resources(), self.actors)
        chunks = _chunks(files, count, ATTACK_CHUNK) if identity.batch <= 1 else \
            [files[i : i + identity.batch] for i in range(0, len(files), identity.batch)]  # a chunk decodes together
        attacker = ray.remote(Attacker).options(**resources)
        pool = [attacker.remote(identity, options, cwd) for _ in range(min(count, len(chunks)))]
        try:
            refs = (pool[i % len(pool)].attack.remote(static.remote(chunk, options, cwd))  # chained on the cluster
                    for i, chunk in enumerate(chunks))
            for results in _in_order(refs, IN_FLIGHT * len(pool)):
                yield from results
        finally:
            for actor in pool:
                ray.kill(actor)


class Attacker:
    """An identity actor: its own copy of the check (models loaded on first use, then kept), fed chunks
    of static results."""

    def __init__(self, identity: Check, options: ScanOptions, cwd: str):
        self.identity, self.options, self.cwd = identity, options, cwd

    def attack(self, results: list[FileResult]) -> list[FileResult]:
        with _in_dir(self.cwd):
            return attack_chunk(results, self.options, self.identity)


def _ray():
    """The ray module, or a usage error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"--engine ray needs Ray: {INSTALL}") from None
    return ray


def _cpus() -> int:
    return max(1, int(_ray().cluster_resources().get("CPU", 1)))


def _attackers(resources: dict, wanted: int | None) -> tuple[int, dict]:
    """How many identity actors (``wanted``; default one per GPU, else one per CPU but one) and what
    each asks Ray for: a GPU when there are GPUs (a share of one when there are fewer), and a CPU while
    that leaves one to the static tasks (else none: they share the CPUs)."""
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    count = max(1, wanted or gpus or cpus - 1)
    asks = {"num_cpus": 1 if count < cpus else 0}
    if gpus:
        asks["num_gpus"] = min(1.0, gpus / count)
    return count, asks


def _chunks(files: list, workers: int, most: int) -> list[list]:
    """``files`` in order, in chunks of at most ``most``, small enough to give each worker about four."""
    size = max(1, min(most, len(files) // (workers * 4)))
    return [files[i : i + size] for i in range(0, len(files), size)]


def _in_order(refs: Iterator, window: int) -> Iterator:
    """The values of ``refs`` in their order, submitting them lazily with at most ``window`` in flight;
    when the caller stops early, what is still in flight is cancelled."""
    ray, pending = _ray(), deque()
    try:
        for ref in refs:
            pending.append(ref)
            if len(pending) >= window:
                yield _get(pending.popleft())
        while pending:
            yield _get(pending.popleft())
    finally:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref)


def _get(ref):
    """``ray.get``, raising the scan's own exception (a usage error, a bad attack model) rather than Ray's
    wrapper, and an interrupt as itself."""
    ray = _ray()
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, Exception):
            raise e.cause from None
        raise
    except SystemError as e:  # a signal handler's exception (SIGINT, SIGTERM) raised inside Ray's C code
        if isinstance(e.__cause__, BaseException) and not isinstance(e.__cause__, Exception):
            raise e.__cause__ from None
        raise


def _digest_chunk(paths: list[str], cwd: str) -> list[str | None]:
    with _in_dir(cwd):
        return [file_sha256(path) for path in paths]


def _scan_chunk(items: list[tuple[str, str | None]], options: ScanOptions, cwd: str) -> list[FileResult]:
    with _in_dir(cwd):
        return [scan_file(path, options, sha256=sha256) for path, sha256 in items]


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Put this process's SIGINT and SIGTERM handlers back after the block: ``ray.init`` installs its
    own crash handler for SIGTERM, which aborts the process instead of stopping the scan."""
    kept = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in kept.items():
            with contextlib.suppress(TypeError, ValueError):  # not set from Python, or not the main thread
                signal.signal(signum, handler)


@contextlib.contextmanager
def _in_dir(path: str) -> Iterator[None]:
    """In ``path`` (the driver's working directory, which relative paths are relative to) where this node has it."""
    before = os.getcwd()
    if os.path.isdir(path):
        os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)
