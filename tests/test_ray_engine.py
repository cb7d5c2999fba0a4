"""``scan --engine ray`` on a local Ray (one session for the module: starting Ray costs seconds): the same
reports as the local engine, static and with the attack; ``--resume``; error records; the flags' usage
errors; and one clear line when Ray is not installed."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest

from lora_audit.cli import main
from lora_audit.errors import InputError
from lora_audit.scan.ray_engine import INSTALL, _attackers
from lora_audit.testing import synthetic as S
from report_checks import comparable, parse_json_report, parse_jsonl_report


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray of two CPUs that every ``--engine ray`` scan of this module joins (and leaves open)."""
    from lora_audit.scan.ray_engine import ray_engine

    with ray_engine(num_cpus=2, object_store_memory=100 * 1024 * 1024) as engine:
        yield engine


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """The static samples, more LoRAs than a chunk (some leaky, two with the same bytes), a truncated
    file, a pickle checkpoint and a path that does not exist."""
    folder = tmp_path_factory.mktemp("ray_batch")
    S.write_static_samples(folder)
    for i in range(12):
        S.save_synthetic(folder / f"k{i:02}.safetensors", S.as_kohya(S.make_lora("sd15", rank=2, max_modules=2, seed=i)),
                         S.leaky_kohya_metadata() if i % 4 == 0 else None)
    shutil.copy(folder / "k03.safetensors", folder / "k03_copy.safetensors")
    (folder / "truncated.safetensors").write_bytes((folder / "k05.safetensors").read_bytes()[:200])
    (folder / "model.ckpt").write_bytes(pickle.dumps({"state_dict": {}}))
    return folder


def _report(args: list[str], capsys) -> tuple[int, dict]:
    code = main(["scan", *map(str, args), "-q", "-f", "json"])
    return code, comparable(parse_json_report(capsys.readouterr().out))


@pytest.mark.parametrize("attack", ["--no-attack", "--attack=auto"])  # the attack: LA303 from the actors (no sd1 model)
def test_ray_gives_the_local_engines_report(ray_session, batch, attack, capsys):
    missing = batch / "missing.safetensors"
    local_code, local = _report([batch, missing, attack], capsys)
    ray_code, ray = _report([batch, missing, attack, "--engine", "ray"], capsys)
    assert ray == local and ray_code == local_code == 2  # the truncated file, the pickle and the missing path
    files = {os.path.basename(f["path"]): f for f in ray["files"]}
    assert files["k03_copy.safetensors"]["same_as"] == str(batch / "k03.safetensors")
    assert files["k03_copy.safetensors"]["sha256"] == files["k03.safetensors"]["sha256"] is not None
    assert [f["rule_id"] for f in files["truncated.safetensors"]["findings"]] == ["LA001"]
    assert files["model.ckpt"]["error"] and files["missing.safetensors"]["error"]
    assert ("LA303" in {x["rule_id"] for x in files["k00.safetensors"]["findings"]}) == (attack == "--attack=auto")


def test_ray_streams_json_lines_in_input_order_and_resumes(ray_session, batch, tmp_path, capsys):
    folder = tmp_path / "batch"
    shutil.copytree(batch, folder)
    (folder / "k11.safetensors").unlink()
    report = tmp_path / "r.jsonl"
    args = ["scan", str(folder), "-q", "--no-attack", "-f", "jsonl", "-o", str(report), "--engine", "ray"]
    assert main(args) == 2
    first = report.read_text().splitlines()
    assert main(["scan", str(folder), "-q", "--no-attack", "-f", "jsonl"]) == 2  # the local engine, one process
    local, _ = parse_jsonl_report(capsys.readouterr().out)
    assert [json.loads(line)["path"] for line in first[:-1]] == [f["path"] for f in local]
    shutil.copy(batch / "k11.safetensors", folder)
    assert main(args + ["--resume"]) == 2
    files, summary = parse_jsonl_report(report.read_text())
    assert report.read_text().splitlines()[:len(first) - 1] == first[:-1]  # what was written stays
    assert [os.path.basename(f["path"]) for f in files[len(first) - 1:]] == ["k11.safetensors"]
    assert summary["files"] == len(local) + 1 and summary["errors"] == 2


def test_an_error_in_a_worker_is_the_scans_own(ray_session):
    import ray

    from lora_audit.scan.ray_engine import _get

    def bad_input():  # a nested function travels by value: the worker need not import this module
        raise InputError("attack_model", "x", "is not an attack model")

    with pytest.raises(InputError) as raised:
        _get(ray.remote(bad_input).remote())
    assert (raised.value.input, raised.value.problem) == ("attack_model", "is not an attack model")


def test_the_address_is_the_flag_then_ray_address_then_a_local_ray(ray_session, batch, monkeypatch):
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as if this process held no session: the
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))  # scan records how it would connect
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))  # and runs on the module's one
    one = str(batch / "k01.safetensors")
    assert main(["scan", one, "-q", "--no-attack", "--engine", "ray", "--ray-address", "10.0.0.1:6379"]) == 0
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert main(["scan", one, "-q", "--no-attack", "--engine", "ray"]) == 0
    monkeypatch.delenv("RAY_ADDRESS")
    assert main(["scan", one, "-q", "--no-attack", "--engine", "ray"]) == 0
    calls = [c for c in calls if c == "shutdown" or "address" in c]  # not Ray's own auto-init: ray.init()
    joined, from_env, started = calls[0], calls[2], calls[4]
    assert joined["address"] == "10.0.0.1:6379" and "include_dashboard" not in joined
    assert from_env["address"] == "ray://head:10001"
    assert started["address"] == "local" and started["include_dashboard"] is False
    assert calls[1::2] == ["shutdown"] * 3  # each disconnects; ray.shutdown stops only a Ray it started


def test_sigterm_stops_a_scan_that_started_its_own_ray(batch):
    """``ray.init`` installs a crash handler for SIGTERM that would abort the process: the engine puts
    the CLI's back, so a job scheduler's SIGTERM is exit code 143 and one line, and Ray is stopped."""
    code = f"""
import os, signal
import lora_audit.scan.ray_engine as engine
from lora_audit.cli import main
hashed = engine.RayEngine.digests
def digests(self, files):  # the scan has started its own Ray: SIGTERM arrives now
    os.kill(os.getpid(), signal.SIGTERM)
    return hashed(self, files)
engine.RayEngine.digests = digests
raise SystemExit(main(["scan", {str(batch)!r}, "-q", "--no-attack", "--engine", "ray", "-f", "jsonl"]))
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 143 and done.stderr.strip().splitlines()[-1] == "lora-audit: terminated"


def test_engine_flags_that_do_not_fit_are_usage_errors(batch, capsys):
    one = str(batch / "k01.safetensors")
    assert main(["scan", one, "--engine", "ray", "-j", "2"]) == 4
    assert main(["scan", one, "--ray-address", "auto"]) == 4
    assert main(["scan", one, "--engine", "spark"]) == 4
    err = capsys.readouterr().err
    assert "--jobs is the local engine's" in err and "--ray-address needs --engine ray" in err


def test_without_ray_installed_the_engine_is_one_line_naming_the_extra(batch, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    assert main(["scan", str(batch / "k01.safetensors"), "--no-attack", "--engine", "ray"]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and INSTALL in err
    assert main(["scan", str(batch / "k01.safetensors"), "-q", "--no-attack"]) == 0  # the local engine needs no Ray


def test_identity_actors_take_a_gpu_each_else_leave_a_cpu_to_the_static_tasks():
    assert _attackers({"CPU": 16, "GPU": 4}, None) == (4, {"num_cpus": 1, "num_gpus": 1.0})
    assert _attackers({"CPU": 16, "GPU": 2}, 4) == (4, {"num_cpus": 1, "num_gpus": 0.5})
    assert _attackers({"CPU": 2}, None) == (1, {"num_cpus": 1})
    assert _attackers({"CPU": 1}, None) == (1, {"num_cpus": 0})  # one CPU: the actor shares it
    assert _attackers({"CPU": 2}, 2) == (2, {"num_cpus": 0})


@pytest.mark.slow
def test_ray_actors_give_the_local_attacks_findings(ray_session, tmp_path_factory, capsys):
    """The tiny toy world's attack in the actors (its models loaded there) against the same scan here."""
    root = tmp_path_factory.mktemp("ray_toy")
    assert main(["toy", "build", "--tiny", "--out", str(root / "build")]) == 0
    capsys.readouterr()
    installed = root / "build" / "installed"
    args = [installed / "weights_samples", "--attack-model", installed / "data" / "attack",
            "--base", installed / "data" / "base", "--reconstructions", root / "rec", "--fail-on", "critical"]
    local_code, local = _report(args, capsys)
    ray_code, ray = _report([*args, "--engine", "ray"], capsys)
    assert ray == local and ray_code == local_code == 0
    attacked = [f for f in ray["files"] if os.path.basename(f["path"]).startswith("tiny_")]
    assert len(attacked) == 2 and all({"LA301", "LA302", "LA310"} & {x["rule_id"] for x in f["findings"]} for f in attacked)
    batch_code, batched = _report([*args, "--engine", "ray", "--attack-batch", "2"], capsys)  # both files in one batch
    rules = lambda report: [(f["path"], sorted(x["rule_id"] for x in f["findings"])) for f in report["files"]]  # noqa: E731
    assert batch_code == 0 and rules(batched) == rules(local)
