"""The hostile corpus (``lora_audit.testing.hostile``), each file scanned in a fresh process: wall time,
peak RSS and exit code per case, against the target "no input under 10 MB drives the scan above 1 GiB
RSS or 10 s".

    python benchmarks/bench_hostile.py [--cases a,b] [--timeout 120] [--memory-limit-gib 8] [--keep DIR]

Each case runs ``python -m lora_audit scan FILE -f json -o OUT --no-attack`` under a tiny wrapper
process whose only child is the scan: the wrapper's ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is then
the scan's own peak RSS (the maximum over it and any process it waited for), not a maximum
accumulated over earlier cases. The wrapper also puts an address-space limit on the scan
(``--memory-limit-gib``, 0 for none) so a runaway case fails instead of taking the machine down, and
kills it after ``--timeout`` seconds. ``strip`` runs too on the cases whose hostile part is metadata
(``STRIPPABLE``). A case passes when its exit code is a documented one (scan: 0, 1, 2; strip: 0, 2),
no file record is an internal error, and it stays under 1 GiB and 10 s. Exits 1 if any case fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from lora_audit.testing.hostile import CASES, SKIPPED, STRIPPABLE

RSS_LIMIT_MIB = 1024
SECONDS_LIMIT = 10.0

# Runs the command in argv[3:], with an address-space limit of argv[1] GiB (0: none) and a timeout of
# argv[2] s, and prints {"rc", "seconds", "max_rss_kib"} of that one child as JSON.
_WRAPPER = r"""
import json, resource, subprocess, sys, time
gib, timeout, cmd = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
def limit():
    if gib > 0:
        resource.setrlimit(resource.RLIMIT_AS, (int(gib * 2**30), int(gib * 2**30)))
start = time.perf_counter()
try:
    done = subprocess.run(cmd, preexec_fn=limit, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
    rc, err = done.returncode, done.stderr.decode(errors="replace")[-2000:]
except subprocess.TimeoutExpired as e:
    rc, err = "timeout", (e.stderr or b"").decode(errors="replace")[-2000:]
seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
print(json.dumps({"rc": rc, "seconds": seconds, "max_rss_kib": rss, "stderr": err}))
"""


def measure(cmd: list[str], memory_limit_gib: float, timeout: float) -> dict:
    done = subprocess.run([sys.executable, "-c", _WRAPPER, str(memory_limit_gib), str(timeout), *cmd],
                          capture_output=True, text=True, timeout=timeout + 60)
    if done.returncode != 0:
        raise RuntimeError(f"the wrapper failed: {done.stderr}")
    return json.loads(done.stdout)


def _rules(report: Path) -> tuple[str, bool]:
    """The rule ids of the report's file record, and whether it is an internal error."""
    try:
        (record,) = json.loads(report.read_text())["files"]
    except (OSError, ValueError, KeyError):
        return "(no report)", False
    rules = sorted({f["rule_id"] for f in record["findings"]})
    return ",".join(rules) or "-", "internal error" in (record.get("error") or "")


def run(cases: list[str], memory_limit_gib: float, timeout: float, folder: Path) -> list[dict]:
    corpus = folder / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    rows = []
    python = sys.executable
    for name in cases:
        path = CASES[name](corpus)
        size = path.stat().st_size
        report = folder / f"{name}.json"
        got = measure([python, "-m", "lora_audit", "scan", str(path), "-f", "json", "-o", str(report), "--no-attack"],
                      memory_limit_gib, timeout)
        rules, internal = _rules(report)
        rows.append({"case": name, "command": "scan", "size": size, **got, "rules": rules, "internal": internal,
                     "ok_codes": (0, 1, 2)})
        if name in STRIPPABLE:
            out = folder / f"{name}.stripped.safetensors"
            got = measure([python, "-m", "lora_audit", "strip", str(path), "-o", str(out), "--force"],
                          memory_limit_gib, timeout)
            rules = f"wrote {out.stat().st_size:,} B" if out.exists() else "-"
            rows.append({"case": name, "command": "strip", "size": size, **got, "rules": rules, "internal": False,
                         "ok_codes": (0, 2)})
    for row in rows:
        mib = row["max_rss_kib"] / 1024
        row["mib"] = mib
        row["pass"] = (row["rc"] in row["ok_codes"] and not row["internal"] and row["size"] < 10 << 20
                       and mib <= RSS_LIMIT_MIB and row["seconds"] <= SECONDS_LIMIT)
    return rows


def _baseline(folder: Path, memory_limit_gib: float, timeout: float) -> dict:
    """The same scan of a small benign kohya file: the interpreter's own floor."""
    import lora_audit.testing.synthetic as S

    path = S.save_synthetic(folder / "benign.safetensors", S.as_kohya(S.make_lora("sd15", rank=4, max_modules=8)))
    return measure([sys.executable, "-m", "lora_audit", "scan", str(path), "-f", "json", "-o",
                    str(folder / "benign.json"), "--no-attack"], memory_limit_gib, timeout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names (default: all)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a case is killed")
    parser.add_argument("--memory-limit-gib", type=float, default=8.0,
                        help="address-space limit of each scan (0: none); protects the machine")
    parser.add_argument("--keep", help="write the corpus and reports here instead of a temporary folder")
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")

    with tempfile.TemporaryDirectory(prefix="bench_hostile_") as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        base = _baseline(folder, args.memory_limit_gib, args.timeout)
        rows = run(cases, args.memory_limit_gib, args.timeout, folder)

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; target: every file < 10 MB, scan/strip "
          f"<= {RSS_LIMIT_MIB} MiB peak RSS and <= {SECONDS_LIMIT:.0f} s; address-space limit "
          f"{args.memory_limit_gib:g} GiB, timeout {args.timeout:g} s")
    print(f"baseline (benign 8-module kohya file): {base['max_rss_kib'] / 1024:.0f} MiB, {base['seconds']:.2f} s, "
          f"exit {base['rc']}\n")
    header = (f"{'case':22} {'cmd':5} {'size':>11} {'peak MiB':>9} {'seconds':>8} {'exit':>7}  {'verdict':7} "
              "rules / output")
    print(header)
    print("-" * len(header))
    for r in rows:
        rules = r["rules"] + ("  INTERNAL ERROR" if r["internal"] else "")
        print(f"{r['case']:22} {r['command']:5} {r['size']:>11,} {r['mib']:>9.0f} {r['seconds']:>8.2f} "
              f"{r['rc']!s:>7}  {'PASS' if r['pass'] else 'FAIL':7} {rules}")
        if not r["pass"] and r.get("stderr", "").strip():
            print(f"{'':22} stderr: {r['stderr'].strip().splitlines()[-1][:200]}")
    for name, why in SKIPPED.items():
        print(f"{name:22} skipped: {why}")
    failed = [f"{r['case']} {r['command']}" for r in rows if not r["pass"]]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} runs pass" + (f"; FAIL: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
