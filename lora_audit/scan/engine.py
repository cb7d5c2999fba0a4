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
import logging
import os
import signal
import time
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


def scan_file(path: str, options: ScanOptions | None = None, identity: Check | None = None) -> FileResult:
    """Scan one file. Any problem with the file becomes an error record, never an exception."""
    options = options or ScanOptions()
    start = time.perf_counter()
    result = FileResult(path=path)
    with _file_errors(result):
        result.size_bytes = os.path.getsize(path) if os.path.isfile(path) else None
        _scan_into(path, options, result, identity)
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
               identity: Check | None = None) -> Iterator[FileResult]:
    """Scan ``files``, yielding each result as it finishes (input order when ``jobs`` is 1).

    With ``identity``, each readable LoRA is also attacked (in this process, after its static checks).
    """
    options = options or ScanOptions()
    if jobs <= 1 or len(files) < 2:
        for path in files:
            yield scan_file(path, options, identity)
        return
    with contextlib.closing(_parallel_static(files, options, jobs)) as results:  # closed: the workers stop now
        for result in results:
            yield attack_scanned(result, options, identity) if identity is not None else result


def attack_scanned(result: FileResult, options: ScanOptions, identity: Check) -> FileResult:
    """``result`` of a file whose static checks ran elsewhere, with the identity check's findings added
    when the file is attackable (it is reopened here; a problem of it becomes its error record)."""
    if _attackable(result):
        start, found = time.perf_counter(), []
        with _file_errors(result), LoraFile(result.path) as lora:
            found = _identity_findings(identity, Subject(result.path, lora, result.stats), result)
        result.findings = options.policy.apply([*result.findings, *found])
        result.seconds += time.perf_counter() - start
    return result


class ScanEngine(Protocol):
    """Where a batch's files are hashed and scanned: :class:`LocalEngine`, or ``scan/ray_engine.py``'s
    ``RayEngine``; both run this module's per-file functions."""

    def digests(self, files: list[str]) -> list[str | None]: ...

    def scan(self, files: list[str], options: ScanOptions, identity: Check | None = None) -> Iterator[FileResult]: ...


class LocalEngine:
    """A batch on this machine: files hashed in this process, their static checks in ``jobs`` worker
    processes, the identity check in this process (:func:`scan_files`)."""

    def __init__(self, jobs: int = 1):
        self.jobs = jobs

    def digests(self, files: list[str]) -> list[str | None]:
        """The SHA-256 of each file, in order (None: not a readable regular file)."""
        return [file_sha256(path) for path in files]

    def scan(self, files: list[str], options: ScanOptions, identity: Check | None = None) -> Iterator[FileResult]:
        """Each file's result as it finishes."""
        return scan_files(files, options, self.jobs, identity)


def scan_batch(files: list[str], options: ScanOptions, *, fail_on: Severity, jobs: int = 1,
               identity: Check | None = None, on_result: Callable[[FileResult], None] | None = None,
               not_followed: list[str] = (), hub: dict[str, dict] | None = None,
               earlier: list[FileResult] = (), engine: ScanEngine | None = None) -> ScanResult:
    """Scan ``files`` (from :func:`~lora_audit.scan.collect.collect_files`) and return the whole scan in
    input order; ``on_result`` sees each file's result as soon as it is done (streaming, progress).

    Every file is hashed first (SHA-256; not in a headers-only triage, ``options.weights`` False):
    identical content is scanned once and reported for every path that holds it (``same_as`` names
    the path scanned). ``not_followed``: links out of the
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
    digests = dict(zip(files, engine.digests(files) if options.weights else [None] * len(files)))  # triage: headers only
    first: dict[str, str] = {}  # sha256 -> the path scanned for it
    copies: dict[str, list[str]] = {}  # that path -> the other paths with the same bytes
    for path in files:
        sha = digests[path]
        if sha is not None and sha in first:
            copies[first[sha]].append(path)
            continue
        if sha is not None:
            first[sha] = path
        copies[path] = []
    with contextlib.closing(engine.scan(list(copies), options, identity)) as scanned:  # an interrupt stops the workers now
        for file_result in scanned:
            file_result.sha256, file_result.mtime = digests[file_result.path], _mtime(file_result.path)
            done(file_result)
            for path in copies[file_result.path]:
                done(replace(file_result, path=path, same_as=file_result.path, mtime=_mtime(path)))
    results.sort(key=lambda r: order[r.path])
    again = {r.path for r in results}
    return ScanResult([*[r for r in earlier if r.path not in again], *results], fail_on=fail_on)


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _attackable(result: FileResult) -> bool:
    return result.error is None and result.stats is not None and bool(result.stats.module_count)


def _parallel_static(files: list[str], options: ScanOptions, jobs: int) -> Iterator[FileResult]:
    size = max(1, min(64, len(files) // (jobs * 4)))
    chunks = [files[i : i + size] for i in range(0, len(files), size)]
    pool = ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker)
    try:
        futures = [pool.submit(_scan_chunk, chunk, options) for chunk in chunks]
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


def _scan_chunk(paths: list[str], options: ScanOptions) -> list[FileResult]:
    return [scan_file(p, options) for p in paths]


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
