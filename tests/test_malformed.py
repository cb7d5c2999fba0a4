"""A corpus of malformed files: each gives one clear line and the documented exit code, never a traceback."""

import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_audit.cli import main
from lora_audit.errors import InvalidFileError
from lora_audit.scan.engine import scan_file
from lora_audit.weights import open_lora


def raw_file(header: object, data: bytes = b"", header_len: int | None = None) -> bytes:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(encoded) if header_len is None else header_len) + encoded + data


def valid_bytes() -> bytes:
    down = np.arange(8, dtype=np.float32).reshape(2, 4)
    up = np.ones((4, 2), dtype=np.float32)
    header = {
        "__metadata__": {"ss_output_name": "x"},
        "lora_unet_a_to_q.lora_down.weight": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]},
        "lora_unet_a_to_q.lora_up.weight": {"dtype": "F32", "shape": [4, 2], "data_offsets": [32, 64]},
    }
    return raw_file(header, down.tobytes() + up.tobytes())


T = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
CORPUS = {
    "zero_bytes": (b"", "empty file"),
    "five_bytes": (b"\x01\x02\x03\x04\x05", "too small"),
    "truncated": (valid_bytes()[:-10], "invalid safetensors file"),
    "truncated_header": (valid_bytes()[:60], "runs past the end"),
    "header_past_end": (raw_file({"t": T}, b"\0" * 8, header_len=10_000), "runs past the end"),
    "header_above_limit": (raw_file({"t": T}, b"\0" * 8, header_len=2**40), "above the 100 MB limit"),
    "invalid_json": (raw_file(b"{not json at all", b""), "invalid safetensors file"),
    "non_object_json": (raw_file([1, 2, 3]), "invalid safetensors file"),
    "non_string_metadata": (raw_file({"__metadata__": {"a": 1}, "t": T}, b"\0" * 8), "invalid safetensors file"),
    "overlapping_offsets": (raw_file({"a": T, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
                            "invalid safetensors file"),
    "out_of_range_offsets": (raw_file({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}}, b"\0" * 8),
                             "invalid safetensors file"),
    "wrong_byte_count": (raw_file({"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}, b"\0" * 8),
                         "invalid safetensors file"),
    "unknown_dtype": (raw_file({"t": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
                      "invalid safetensors file"),
    "text_file": (b"this is a readme, not a model\n" * 3, "not a safetensors file"),
}


@pytest.fixture
def corpus(tmp_path):
    paths = {}
    for name, (content, _) in CORPUS.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        paths[name] = path
    return paths


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_malformed_file_gives_one_clear_line_and_exit_2(corpus, name, capsys):
    path = str(corpus[name])
    with pytest.raises(InvalidFileError) as err:
        open_lora(path)
    assert CORPUS[name][1] in str(err.value)
    assert "\n" not in str(err.value) and len(err.value.reason) < 200

    result = scan_file(path)
    assert result.error is not None and not result.error.startswith("internal error")
    assert [f.rule_id for f in result.findings] == ["LA001"]

    assert main(["scan", "--format", "json", path]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["files"][0]["error"] == result.error


def test_batch_of_bad_files_never_stops_and_streams_one_line_each(corpus, tmp_path, capsys):
    good = tmp_path / "good.safetensors"
    good.write_bytes(valid_bytes())
    from report_checks import comparable, parse_json_report, parse_jsonl_report

    assert main(["scan", "--format", "jsonl", "--jobs", "2", str(tmp_path)]) == 2
    files, summary = parse_jsonl_report(capsys.readouterr().out)
    assert len(files) == len(CORPUS) + 1 and summary["errors"] == len(CORPUS)
    assert [f["path"] for f in files if f["error"] is None] == [str(good)]
    assert main(["scan", "--format", "jsonl", "--jobs", "1", str(tmp_path)]) == 2
    serial, serial_summary = parse_jsonl_report(capsys.readouterr().out)
    untimed = lambda records: sorted(({k: v for k, v in r.items() if k != "seconds"} for r in records),  # noqa: E731
                                     key=lambda r: r["path"])
    assert untimed(files) == untimed(serial) and summary == serial_summary  # two workers: the same results
    for name, (_, reason) in CORPUS.items():
        (record,) = [f for f in files if f["path"] == str(corpus[name])]
        assert reason in record["error"] and [x["rule_id"] for x in record["findings"]] == ["LA001"]
    reports = []
    for jobs in ("1", "2"):  # the whole report, in input order, whatever the workers
        assert main(["scan", "--format", "json", "--jobs", jobs, str(tmp_path)]) == 2
        reports.append(comparable(parse_json_report(capsys.readouterr().out)))
    assert reports[0] == reports[1]


def test_directory_named_like_a_file_means_nothing_scanned(tmp_path, capsys):
    folder = tmp_path / "x.safetensors"
    folder.mkdir()
    assert main(["scan", str(folder)]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no .safetensors" in err


def test_symlink_loop_and_missing_file(tmp_path, capsys):
    loop = tmp_path / "loop.safetensors"
    os.symlink(loop, loop)
    assert "symbolic link loop" in scan_file(str(loop)).error
    assert "no such file" in scan_file(str(tmp_path / "missing.safetensors")).error
    assert main(["scan", "-q", str(loop)]) == 2


class _SideEffect:
    """Unpickling this would create a marker file via os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_reported_without_being_run(tmp_path):
    marker = tmp_path / "pwned"
    raw = tmp_path / "evil.ckpt"
    raw.write_bytes(pickle.dumps({"state_dict": _SideEffect(marker)}, protocol=4))
    archive = tmp_path / "evil_zip.pt"
    with zipfile.ZipFile(archive, "w") as zf:  # the torch.save layout
        zf.writestr("archive/data.pkl", pickle.dumps(_SideEffect(marker), protocol=2))
    for path in (raw, archive):
        result = scan_file(str(path))
        assert result.error is not None and "pickle" in result.error
        (finding,) = result.findings
        assert finding.rule_id == "LA002" and "system" in finding.message
    assert not marker.exists()


def test_pickle_scan_in_a_subprocess_has_no_side_effect(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.bin"
    evil.write_bytes(pickle.dumps(_SideEffect(marker)))
    proc = subprocess.run([sys.executable, "-m", "lora_audit", "scan", "--format", "json", str(evil)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert not marker.exists()


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_bytes_never_raise(tmp_path, data):
    content = bytearray(valid_bytes())
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(content) - 1))
        content[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(content)))
    path = tmp_path / "mutant.safetensors"
    path.write_bytes(bytes(content[:cut]))
    result = scan_file(str(path))
    assert result.error is None or not result.error.startswith("internal error"), result.error
