"""The scan of a batch: read each file safely, run the checks on it, never let one bad file stop a batch.

Per file: the safetensors header is validated, pickle checkpoints get the pickle finding and are
never loaded, and a LoRA is opened once for every check (metadata, weights, then identity). The
static checks run in ``jobs`` worker processes; the identity check, which holds models, runs in
this process (on the file opened once when ``jobs`` is 1, reopened here otherwise). That is the
:class:`LocalEngine`; ``scan/ray_engine.py`` runs the same per-file functions on a Ray cluster.

Workers ignore SIGINT and die with this process (SIGTERM on Linux when it dies). When the scan
stops early (an interrupt, an error, a consumer that stops reading), queued work is cancelled and
the workers are terminated, not waited for.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import signal
import stat
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Protocol

from lora_audit.errors import AttackFailedError, InvalidFileError, UsageError
from lora_audit.policy import Policy
from lora_audit.results import FileResult, ScanResult, Severity
from lora_audit.rules import make_finding
from lora_audit.scan.check import Check, Subject
from lora_audit.scan.content import file_sha256
from lora_audit.scan.metadata import MetadataCheck
from lora_audit.scan.pickle import NOT_LOADED, pickle_finding
from lora_audit.scan.weights import WeightCheck
from lora_audit.weights.lora_file import LoraFile
from lora_audit.weights.pickle_file import looks_like_pickle
from lora_audit.weights.safetensors_file import check_file
from lora_audit.weights.stats import weight_stats
from lora_audit.weights.update_file import is_update, update_facts

log = logging.getLogger("lora_audit")


@dataclass
class ScanOptions:
    redact: bool = False
    policy: Policy = field(default_factory=Policy)
    weights: bool = True  # False: header only, no NaN/Inf check and no per-module dW statistics

    def checks(self) -> list[Check]:
        """The static checks, in report order."""
        return [MetadataCheck(redact=self.redact), WeightCheck(read_data=self.weights)]


def scan_file(path: str, options: ScanOptions | None = None, identity: Check | None = None,
              sha256: str | None = None) -> FileResult:
    """Scan one file. Any problem with the file becomes an error record, never an exception.

    A full scan (``options.weights``) records the file's SHA-256: ``sha256`` when the caller hashed it
    already, else hashed here (from the bytes the scan read, for a LoRA)."""
    options = options or ScanOptions()
    start = time.perf_counter()
    result = FileResult(path=path, sha256=sha256)
    with _file_errors(result):
        result.size_bytes = os.path.getsize(path) if os.path.isfile(path) else None
        _scan_into(path, options, result, identity)
    if options.weights and result.sha256 is None:  # not a LoRA read to its end: a pickle, an invalid file
        result.sha256 = file_sha256(path)
    result.findings = options.policy.apply(result.findings)
    result.seconds = time.perf_counter() - start
    return result


@contextlib.contextmanager
def _file_errors(result: FileResult) -> Iterator[None]:
    """Any problem of the file ``result`` is about becomes its error record (LA001), never an exception;
    a bad input (a usage error, another file such as an attack model being invalid) stops the scan."""
    try:
        yield
    except InvalidFileError as e:
        if e.path != result.path:  # an attack model or a reference photo, not this file: the inputs are broken
            raise
        result.error = e.reason
        result.findings.append(make_finding("LA001", e.reason))
    except UsageError:  # a bad input stops the scan with one line
        raise
    except Exception as e:  # a bug must not stop a batch of thousands of files
        log.debug("internal error scanning %s", result.path, exc_info=True)
        result.error = f"internal error ({type(e).__name__}: {e}); please report it"
        result.findings.append(make_finding("LA001", result.error))


def scan_files(files: list[str], options: ScanOptions | None = None, jobs: int = 1,
               identity: Check | None = None, digests: dict[str, str | None] | None = None) -> Iterator[FileResult]:
    """Scan ``files``, yielding each result as it finishes (input order when ``jobs`` is 1).

    With ``identity``, each readable LoRA is also attacked (in this process, after its static checks).
    ``digests``: the SHA-256 of files hashed already (the others are hashed by the worker that scans them).
    """
    options, digests = options or ScanOptions(), digests or {}
    if identity is not None and identity.batch > 1:  # static checks first, then the attack a batch of files at a time
        static = scan_files(files, options, jobs, None, digests)
        while chunk := list(itertools.islice(static, identity.batch)):
            yield from attack_chunk(chunk, options, identity)
        return
    if jobs <= 1 or len(files) < 2:
        for path in files:
            yield scan_file(path, options, identity, digests.get(path))
        return
    chunks = [[(path, digests.get(path)) for path in chunk] for chunk in _chunks(files, jobs)]
    with contextlib.closing(_in_workers(_scan_chunk, chunks, jobs, options)) as results:  # closed: the workers stop now
        for result in results:
            yield attack_scanned(result, options, identity) if identity is not None else result


def attack_scanned(result: FileResult, options: ScanOptions, identity: Check,
                   subject: Subject | None = None) -> FileResult:
    """``result`` of a file whose static checks ran elsewhere, with the identity check's findings added
    when the file is attackable (it is reopened here unless ``subject`` holds it open; a problem of it
    becomes its error record)."""
    if _attackable(result):
        start, found = time.perf_counter(), []
        with _file_errors(result), (contextlib.nullcontext(subject.lora) if subject else LoraFile(result.path)) as lora:
            found = _identity_findings(identity, Subject(result.path, lora, result.stats), result)
        result.findings = options.policy.apply([*result.findings, *found])
        result.seconds += time.perf_counter() - start
    return result


def attack_chunk(results: list[FileResult], options: ScanOptions, identity: Check) -> list[FileResult]:
    """:func:`attack_scanned` of several results; with an identity check whose ``batch`` is above 1, its
    attackable files are opened that many at a time and their reconstructions decoded in one batch
    (the check's ``prepare``)."""
    batch = identity.batch
    if batch <= 1:
        return [attack_scanned(result, options, identity) for result in results]
    if len(results) > batch:
        return [r for i in range(0, len(results), batch) for r in attack_chunk(results[i : i + batch], options, identity)]
    with contextlib.ExitStack() as stack:
        subjects = {}
        for result in filter(_attackable, results):
            with contextlib.suppress(Exception):  # unreadable now: attack_scanned records why
                subjects[result.path] = Subject(result.path, stack.enter_context(LoraFile(result.path)), result.stats)
        if len(subjects) > 1:
            identity.prepare(list(subjects.values()))
        return [attack_scanned(result, options, identity, subjects.get(result.path)) for result in results]


class ScanEngine(Protocol):
    """Where a batch's files are hashed and scanned: :class:`LocalEngine`, or ``scan/ray_engine.py``'s
    ``RayEngine``; both run this module's per-file functions."""

    def digests(self, files: list[str]) -> list[str | None]: ...

    def scan(self, files: list[str], options: ScanOptions, identity: Check | None = None,
             digests: dict[str, str | None] | None = None) -> Iterator[FileResult]: ...


class LocalEngine:
    """A batch on this machine: files hashed and their static checks run in ``jobs`` worker processes,
    the identity check in this process (:func:`scan_files`)."""

    def __init__(self, jobs: int = 1):
        self.jobs = jobs

    def digests(self, files: list[str]) -> list[str | None]:
        """The SHA-256 of each file, in order (None: not a readable regular file)."""
        if self.jobs <= 1 or len(files) < 2:
            return [file_sha256(path) for path in files]
        done = dict(_in_workers(_digest_chunk, _chunks(files, self.jobs), self.jobs))  # path -> digest
        return [done[path] for path in files]

    def scan(self, files: list[str], options: ScanOptions, identity: Check | None = None,
             digests: dict[str, str | None] | None = None) -> Iterator[FileResult]:
        """Each file's result as it finishes."""
        return scan_files(files, options, self.jobs, identity, digests)


def scan_batch(files: list[str], options: ScanOptions, *, fail_on: Severity, jobs: int = 1,
               identity: Check | None = None, on_result: Callable[[FileResult], None] | None = None,
               not_followed: list[str] = (), hub: dict[str, dict] | None = None,
               earlier: list[FileResult] = (), engine: ScanEngine | None = None) -> ScanResult:
    """Scan ``files`` (from :func:`~lora_audit.scan.collect.collect_files`) and return the whole scan in
    input order; ``on_result`` sees each file's result as soon as it is done (streaming, progress).

    A full scan (``options.weights``; not a headers-only triage) hashes every file (SHA-256): identical
    content is scanned once and reported for every path that holds it (``same_as`` names the path
    scanned). Only files that may copy another (:func:`_may_be_copies`) are hashed before the scan,
    the others by the worker that scans them. ``not_followed``: links out of the
    scanned tree, reported (LA004) and never read. ``hub``: Hugging Face cache facts by path.
    ``earlier``: results of a run being resumed; they count in the result, before the new ones, and
    are not streamed again (a file scanned again replaces its earlier record). ``engine``: where the
    hashing and the scan run (default: ``LocalEngine(jobs)``; a Ray one ignores ``jobs``).
    """
    engine = engine or LocalEngine(jobs)
    hub = hub or {}
    order = {path: i for i, path in enumerate([*files, *not_followed])}
    results = []

    def done(result: FileResult) -> None:
        result.hub = hub.get(result.path)
        results.append(result)
        if on_result is not None:
            on_result(result)

    for path in not_followed:
        done(FileResult(path=path, findings=options.policy.apply([make_finding(
            "LA004", "a symbolic link out of the scanned folder: not followed (pass --follow-links to scan it)",
            {"target": os.path.realpath(path)})])))
    maybe_copies = _may_be_copies(files) if options.weights else []  # triage: headers only, no hashes
    digests = dict(zip(maybe_copies, engine.digests(maybe_copies)))
    first: dict[str, str] = {}  # sha256 -> the path scanned for it
    copies: dict[str, list[str]] = {}  # that path -> the other paths with the same bytes
    for path in files:
        sha = digests.get(path)
        if sha is not None and sha in first:
            copies[first[sha]].append(path)
            continue
        if sha is not None:
            first[sha] = path
        copies[path] = []
    with contextlib.closing(engine.scan(list(copies), options, identity, digests)) as scanned:  # an interrupt stops the workers now
        for file_result in scanned:
            file_result.mtime = _mtime(file_result.path)
            done(file_result)
            for path in copies[file_result.path]:
                done(replace(file_result, path=path, same_as=file_result.path, mtime=_mtime(path)))
    results.sort(key=lambda r: order[r.path])
    again = {r.path for r in results}
    return ScanResult([*[r for r in earlier if r.path not in again], *results], fail_on=fail_on)


def _may_be_copies(files: list[str]) -> list[str]:
    """The regular files of ``files`` that another one may copy: same size, then the same first and last
    64 KiB (the header and its metadata, which differ between training runs). Only these need their
    SHA-256 before the scan; the others are hashed by the worker that scans them."""
    sizes = {}
    for path in files:
        with contextlib.suppress(OSError):
            if stat.S_ISREG((st := os.stat(path)).st_mode):
                sizes[path] = st.st_size
    count = Counter(sizes.values())
    same_size = [path for path in files if path in sizes and count[sizes[path]] > 1]
    ends = {path: _ends(path, sizes[path]) for path in same_size}
    count = Counter(ends.values())
    return [path for path in same_size if ends[path] is not None and count[ends[path]] > 1]


def _ends(path: str, size: int, span: int = 1 << 16) -> tuple[int, bytes] | None:
    """The size and a digest of the first and last ``span`` bytes of ``path`` (None when unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(span)
            f.seek(max(0, size - span))
            return size, hashlib.sha256(head + f.read(span)).digest()
    except OSError:
        return None


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _attackable(result: FileResult) -> bool:
    return result.error is None and result.stats is not None and bool(result.stats.module_count)


def _chunks(files: list, jobs: int) -> list[list]:
    """``files`` in order, in chunks of at most 64, small enough to give each worker about sixteen: the
    workers finish together, and no worker waits on a long last chunk of large files."""
    size = max(1, min(64, len(files) // (jobs * 16)))
    return [files[i : i + size] for i in range(0, len(files), size)]


def _in_workers(function: Callable, chunks: list, jobs: int, *args) -> Iterator:
    """``function(chunk, *args)`` for every chunk in ``jobs`` worker processes: each item of its result,
    chunk by chunk as they finish."""
    pool = ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker)
    try:
        futures = [pool.submit(function, chunk, *args) for chunk in chunks]
        for future in as_completed(futures):
            yield from future.result()
        pool.shutdown()
    except BaseException:  # an interrupt, an error, or the consumer stopped early: stop now
        _stop_pool(pool)
        raise


def _init_worker() -> None:
    """In each worker: leave SIGINT to the parent, die on SIGTERM, and (Linux) get SIGTERM when the parent dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel the queued work, terminate the workers (their running chunks are not waited for) and
    wait, briefly, until the pool's own thread has noticed."""
    # not public: the workers, the pool's thread and the pipe their results come back on
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager, results = getattr(pool, "_executor_manager_thread", None), getattr(pool, "_result_queue", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(1)
    # A worker killed while sending a result leaves the pool's thread waiting for the rest of it;
    # closing this process's copy of the pipe's write end ends that wait (EOF), and the thread exits.
    with contextlib.suppress(Exception):
        results._writer.close()
    if manager is not None:
        manager.join(1)


def _scan_chunk(items: list[tuple[str, str | None]], options: ScanOptions) -> list[FileResult]:
    return [scan_file(path, options, sha256=sha256) for path, sha256 in items]


def _digest_chunk(paths: list[str]) -> list[tuple[str, str | None]]:
    return [(path, file_sha256(path)) for path in paths]


def _scan_into(path: str, options: ScanOptions, result: FileResult, identity: Check | None) -> None:
    size = check_file(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if looks_like_pickle(path, head, size):
        result.findings.append(pickle_finding(path))
        result.error = NOT_LOADED
        return
    with LoraFile(path) as lora:
        subject = Subject(path, lora)
        if is_update(lora.metadata):  # a federated client update: its facts, not a LoRA analysis
            result.findings.extend(_update_findings(path, subject, options))
            return
        for check in options.checks():
            result.findings.extend(check.run(subject))
        result.stats = subject.stats = weight_stats(lora, per_module=options.weights)
        if options.weights and result.sha256 is None:
            result.sha256 = lora.file.sha256()
        if identity is not None and _attackable(result):
            result.findings.extend(_identity_findings(identity, subject, result))


def _update_findings(path: str, subject: Subject, options: ScanOptions) -> list:
    """LA005 with the update's static facts, and the metadata checks (an update's metadata can leak too);
    no LoRA-layout (LA003) or weight (LA2xx) checks and no identity attack: it is not a LoRA."""
    lora = subject.lora
    facts = update_facts(path, lora.metadata, {name: info.shape for name, info in lora.tensors.items()})
    metadata_findings = [f for check in options.checks() if isinstance(check, MetadataCheck)
                         for f in check.run(subject)]
    message = (f"a federated client update ({facts.what}) of batch {facts.batch_size}: {facts.tensor_count} tensors, "
               f"{facts.parameter_count:,} parameters; a server can invert it into the client's photos")
    return [make_finding("LA005", message, facts.evidence()), *metadata_findings]


def _identity_findings(identity: Check, subject: Subject, result: FileResult) -> list:
    """The identity check's findings; an attack that failed on the file is an error record of it (LA307)."""
    try:
        return identity.run(subject)
    except AttackFailedError as e:
        result.error = str(e)
        return [make_finding("LA307", str(e))]
