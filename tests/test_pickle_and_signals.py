"""Hardening regressions: pickle evidence that cannot be evaded, bounded reads of pickle archives,
and scans that stop cleanly on SIGINT / SIGTERM."""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import tracemalloc
import zipfile

import psutil
import pytest

import lora_audit.testing.synthetic as S
from lora_audit.scan.engine import scan_file, scan_files
from lora_audit.weights.pickle_file import MAX_STREAM_BYTES, looks_like_pickle, pickle_imports

# Pickles built here are never loaded, except by _Recorder, whose find_class returns a harmless stub.


class _Recorder(pickle.Unpickler):
    """The globals a real unpickler asks for, without importing or calling any of them."""

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self.seen = []

    def find_class(self, module, name):
        self.seen.append(f"{module}.{name}")
        return lambda *args: None


def _s(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE


class _Calls:
    """Pickles as a call of ``func("x")``, without the call ever happening here."""

    def __init__(self, func):
        self.func = func

    def __reduce__(self):
        return (self.func, ("x",))


def _la002(path):
    result = scan_file(str(path))
    (finding,) = result.findings
    assert finding.rule_id == "LA002" and "pickle" in result.error
    return finding


# A. pickle evidence


def test_memo_decoy_names_the_global_the_unpickler_really_imports(tmp_path):
    # posix/system memoised and popped, torch/nn left on the stack, then BINGETs feed STACK_GLOBAL
    decoy = (b"\x80\x04" + _s("posix") + b"\x940" + _s("system") + b"\x940" + _s("torch") + _s("nn")
             + b"h\x00h\x01\x93" + _s("echo hi") + b"\x85R.")
    recorder = _Recorder(decoy)
    recorder.load()
    assert recorder.seen == ["posix.system"]  # the decoy is a real attack
    path = tmp_path / "decoy.pt"
    path.write_bytes(decoy)
    assert pickle_imports(str(path)).unsafe == ["posix.system"]
    finding = _la002(path)
    assert "posix.system" in finding.message and "torch.nn" not in finding.message


def test_put_and_get_memo_protocol_2(tmp_path):
    data = (b"\x80\x02" + b"X\x05\x00\x00\x00posixq\x07" + b"X\x06\x00\x00\x00systemr\x09\x01\x00\x00"
            + b"0" * 2 + _s("torch") + _s("nn") + b"h\x07j\x09\x01\x00\x00\x93N\x85R.")
    recorder = _Recorder(data)
    recorder.load()
    path = tmp_path / "put.pt"
    path.write_bytes(data)
    assert pickle_imports(str(path)).unsafe == recorder.seen == ["posix.system"]


def test_stack_global_operand_that_is_not_a_string_is_named_unknown(tmp_path):
    data = b"\x80\x04N" + _s("system") + b"\x93N\x85R."  # the module is None: the walk cannot name it
    path = tmp_path / "odd.pt"
    path.write_bytes(data)
    assert pickle_imports(str(path)).unsafe == ["?.system"]


def test_allow_list_is_exact_not_a_prefix(tmp_path):
    import numpy.testing._private.utils as np_utils

    runstring = tmp_path / "runstring.pt"
    runstring.write_bytes(pickle.dumps(_Calls(np_utils.runstring), protocol=2))
    torchx = tmp_path / "torchx.pt"  # GLOBAL 'torchx system': a module that merely starts with "torch"
    torchx.write_bytes(b"ctorchx\nsystem\n(S'x'\ntR.")
    assert pickle_imports(str(runstring)).unsafe == ["numpy.testing._private.utils.runstring"]
    assert pickle_imports(str(torchx)).unsafe == ["torchx.system"]
    assert "torchx.system" in _la002(torchx).message


def test_real_torch_checkpoints_import_only_allowed_globals(tmp_path):
    torch = pytest.importorskip("torch")
    import numpy as np

    state = collections.OrderedDict(a=torch.zeros(3), b=torch.ones(2, dtype=torch.float16),
                                    c=torch.nn.Parameter(torch.zeros(2)))
    checkpoint = {"state_dict": state, "epoch": np.int64(3), "ema": np.zeros(2), "device": torch.device("cpu")}
    torch.save(checkpoint, tmp_path / "zip.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name, kind in (("zip.pt", "zip"), ("legacy.pt", "raw")):
        found = pickle_imports(str(tmp_path / name))
        assert found.kind == kind and found.unsafe == [] and "torch._utils._rebuild_tensor_v2" in found.imports
        assert found.truncated is None


def test_evidence_lists_every_import_and_the_message_names_eight(tmp_path):
    globals_ = [f"mod{i}\nname{i}\n" for i in range(11)] + ["collections\nOrderedDict\n"]
    path = tmp_path / "many.pkl"
    path.write_bytes(b"(" + b"".join(b"c" + g.encode() for g in globals_) + b"t.")
    finding = _la002(path)
    unsafe = sorted(f"mod{i}.name{i}" for i in range(11))
    assert finding.evidence["imports"] == ["collections.OrderedDict", *unsafe] and finding.evidence["import_count"] == 12
    assert finding.evidence["unsafe_imports"] == unsafe and finding.evidence["unsafe_import_count"] == 11
    assert finding.message.endswith("would import " + ", ".join(unsafe[:8]) + ", +3 more")


def test_raw_pickles_and_zip_archives_are_labelled_apart(tmp_path):
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    archive = tmp_path / "archive.pt"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"a": 1}, protocol=2))
    not_pickle = tmp_path / "text.bin"
    not_pickle.write_bytes(b"\x00\x01 not a pickle")
    assert _la002(raw).evidence["format"] == "pickle (raw stream)"
    assert _la002(archive).evidence["format"] == "pickle (torch.save zip archive)"
    assert _la002(not_pickle).evidence["format"].startswith("pickle extension")


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_pickles_named_safetensors_are_recognised_by_content(tmp_path, protocol):
    path = tmp_path / "model.safetensors"
    data = pickle.dumps({"state_dict": collections.OrderedDict(w=[1.5, 2]), "hook": _Calls(os.system)},
                        protocol=protocol)
    path.write_bytes(data)
    assert looks_like_pickle(str(path), data[:9], len(data))
    finding = _la002(path)
    assert "posix.system" in finding.message or "nt.system" in finding.message


def test_long_protocol_0_pickle_is_recognised_from_its_first_bytes(tmp_path):
    path = tmp_path / "big.safetensors"
    data = pickle.dumps([f"item {i}" for i in range(5000)] + [_Calls(os.system)], protocol=0)
    assert len(data) > 8192
    path.write_bytes(data)
    assert "system" in _la002(path).message


@pytest.mark.parametrize("layout", ["kohya", "peft", "locon"])
def test_real_safetensors_files_are_never_taken_for_pickles(tmp_path, layout):
    lora = S.make_lora("sd15", rank=4, max_modules=3)
    tensors = {"kohya": S.as_kohya, "peft": lambda x: S.as_peft(x)[0], "locon": S.as_locon}[layout](lora)
    for i, metadata in enumerate((None, S.clean_metadata(), S.leaky_kohya_metadata(rank=4))):
        path = S.save_synthetic(tmp_path / f"{layout}{i}.safetensors", tensors, metadata)
        data = path.read_bytes()
        assert not looks_like_pickle(str(path), data[:9], len(data))
        assert scan_file(str(path)).error is None
        for cut in (3, 8, 9, 40, 200, 5000, len(data) // 3):  # a damaged one is unreadable (LA001), not a pickle
            truncated = tmp_path / f"cut{i}-{cut}.safetensors"
            truncated.write_bytes(data[:cut])
            assert not looks_like_pickle(str(truncated), data[:9], cut)
            assert [f.rule_id for f in scan_file(str(truncated)).findings] == ["LA001"]


# B. bounded reads


def _peak_bytes(func):
    tracemalloc.start()
    try:
        func()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_archive_of_huge_compressible_members_is_streamed(tmp_path):
    path = tmp_path / "bomb.pt"
    member = pickle.dumps(_Calls(os.system), protocol=2) + b"\0" * (8 << 20)  # 40 x 8 MB once inflated
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(40):
            zf.writestr(f"archive{i}/data.pkl", member)
    assert path.stat().st_size < 1 << 20
    found = []
    peak = _peak_bytes(lambda: found.append(pickle_imports(str(path))))
    assert peak < 64 << 20
    assert found[0].kind == "zip" and found[0].unsafe and found[0].truncated is None


def test_huge_string_is_not_read_and_truncation_is_reported(tmp_path):
    path = tmp_path / "string.pt"
    length = MAX_STREAM_BYTES + 1024
    member = b"\x80\x02X" + length.to_bytes(4, "little") + b"a" * length + b"0" + pickle.dumps(_Calls(os.system), protocol=2)[2:]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(8):
            zf.writestr(f"archive{i}/data.pkl", member)
    peak = _peak_bytes(lambda: pickle_imports(str(path)))
    assert peak < 64 << 20
    evidence = _la002(path).evidence
    assert "bound per pickle stream" in evidence["truncated"] and "not listed" in evidence["truncated"]


# C. signals


@pytest.fixture(scope="module")
def many_loras(tmp_path_factory):
    """A folder of 600 small LoRA files, each of its own content (identical bytes would be scanned once):
    a -j 2 scan of it takes seconds."""
    folder = tmp_path_factory.mktemp("many")
    tensors = S.as_kohya(S.make_lora("sd15", rank=4, max_modules=12))
    (folder / "loras").mkdir()
    for i in range(600):
        S.save_synthetic(folder / "loras" / f"lora{i:03d}.safetensors", tensors, {"copy": str(i)})
    return folder / "loras"


@pytest.mark.parametrize("signum, to_group", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["sigint", "sigterm", "ctrl-c-to-the-process-group"])
def test_a_signal_stops_a_parallel_scan_at_once_and_keeps_the_streamed_lines(tmp_path, many_loras, signum, to_group):
    report = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "lora_audit", "scan", str(many_loras), "-j", "2", "-f", "jsonl",
                             "-o", str(report), "--no-attack"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not any(f.stat().st_size for f in tmp_path.glob(".out.jsonl.*.tmp")):  # the first lines are out
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.02)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers
        sent = time.monotonic()
        os.killpg(proc.pid, signum) if to_group else proc.send_signal(signum)
        out, err = proc.communicate(timeout=10)  # also: no worker still holds the pipes
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum and took < 5
    assert err.decode() == ("lora-audit: terminated\n" if signum == signal.SIGTERM else "lora-audit: interrupted\n")
    _, alive = psutil.wait_procs(workers, timeout=2)
    assert not alive
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no temporary file stays
    records = [json.loads(line) for line in report.read_text().splitlines()]
    files, last = records[:-1], records[-1]
    assert files and all(r["type"] == "file" for r in files) and len(files) < 600
    assert last["type"] == "incomplete" and last["reason"] == ("terminated" if signum == signal.SIGTERM else "interrupted")
    assert (last["files_scanned"], last["files_total"]) == (len(files), 600)


def test_a_parallel_scan_closed_early_leaves_no_worker(many_loras):
    files = sorted(str(p) for p in many_loras.iterdir())[:200]
    before = set(psutil.Process().children())  # other tests' helpers (a multiprocessing resource tracker, say)
    results = scan_files(files, jobs=2)
    next(results)
    workers = set(psutil.Process().children()) - before
    assert len(workers) == 2
    start = time.monotonic()
    results.close()
    assert time.monotonic() - start < 2
    _, alive = psutil.wait_procs(workers, timeout=2)
    assert not alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_a_killed_scan(many_loras):
    proc = subprocess.Popen([sys.executable, "-m", "lora_audit", "scan", str(many_loras), "-q", "-j", "2", "--no-attack"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(workers := psutil.Process(proc.pid).children(recursive=True)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=3)
    assert not alive


def test_keyboard_interrupt_in_a_command_is_reported_and_the_handlers_restored(monkeypatch, tmp_path, capsys):
    import lora_audit.scan.engine as engine
    from lora_audit.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    path = S.save_synthetic(tmp_path / "a.safetensors", S.as_kohya(S.make_lora("sd15", rank=2, max_modules=2)))
    monkeypatch.setattr(engine, "scan_batch", interrupted)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert main(["scan", "-q", "--no-attack", "-f", "jsonl", "-o", str(tmp_path / "r.jsonl"), str(path)]) == 130
    assert capsys.readouterr().err == "lora-audit: interrupted\n"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert [json.loads(line)["type"] for line in (tmp_path / "r.jsonl").read_text().splitlines()] == ["incomplete"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "r.jsonl"]


def test_other_formats_leave_no_report_and_no_temp_file_when_interrupted(monkeypatch, tmp_path, capsys):
    import lora_audit.scan.engine as engine
    from lora_audit.cli import main

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the CLI's handler turns it into an exception, here
        time.sleep(5)

    path = S.save_synthetic(tmp_path / "a.safetensors", S.as_kohya(S.make_lora("sd15", rank=2, max_modules=2)))
    monkeypatch.setattr(engine, "scan_batch", terminated)
    assert main(["scan", "-q", "--no-attack", "-f", "json", "-o", str(tmp_path / "r.json"), str(path)]) == 143
    assert capsys.readouterr().err == "lora-audit: terminated\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


# Stale temporary files of strip


def test_strip_removes_the_temp_files_of_strips_that_were_killed(tmp_path):
    from lora_audit.scan.strip import TEMP_PREFIX, strip_metadata

    source = S.save_synthetic(tmp_path / "in.safetensors", S.as_kohya(S.make_lora("sd15", rank=2, max_modules=2)),
                              S.leaky_kohya_metadata(rank=2))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "out").mkdir()
        stale = tmp_path / "out" / f"{TEMP_PREFIX}{gone.pid}-abc123"
        running = tmp_path / "out" / f"{TEMP_PREFIX}{live.pid}-def456"
        unnamed = tmp_path / "out" / f"{TEMP_PREFIX}xyz789"  # no pid in the name (an older version's): not ours to judge
        for f in (stale, running, unnamed):
            f.write_bytes(b"\0" * 1024)
        strip_metadata(str(source), str(tmp_path / "out" / "clean.safetensors"))
    finally:
        live.kill()
        live.wait()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(["clean.safetensors", running.name, unnamed.name])
