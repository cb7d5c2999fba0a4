"""Weight checks: non-finite values (LA201), incomplete (LA202) or mismatched (LA203) LoRA pairs (LA203
also covers a module given in two layouts and an unusable alpha), and files with no LoRA tensor at
all (LA003); non-linear LoDA adapters, measured through their first-order dW (LA204)."""

from __future__ import annotations

from lora_audit.evidence import items, per_item
from lora_audit.results import Finding
from lora_audit.rules import make_finding
from lora_audit.scan.check import Check, Subject
from lora_audit.weights.loda import ACTIVATION_KEY, DEFAULT_ACTIVATION


class WeightCheck(Check):
    rule_ids = ("LA003", "LA201", "LA202", "LA203", "LA204")

    def __init__(self, read_data: bool = True):
        self.read_data = read_data  # False: header only, no NaN/Inf check

    def run(self, subject: Subject) -> list[Finding]:
        lora = subject.lora
        findings = []
        bad = lora.file.non_finite() if self.read_data else []
        if bad:
            findings.append(make_finding("LA201", f"{len(bad)} tensor(s) hold NaN or Inf values",
                                         items("tensors", bad)))
        if lora.problems.orphaned:
            findings.append(make_finding(
                "LA202", f"{len(lora.problems.orphaned)} module(s) lack a partner tensor",
                per_item("modules", {name: "has only " + ", ".join(roles)
                                     for name, roles in lora.problems.orphaned.items()})))
        if lora.problems.mismatched:
            findings.append(make_finding(
                "LA203", f"{len(lora.problems.mismatched)} module(s) have incompatible shapes",
                per_item("modules", lora.problems.mismatched)))
        if lora.problems.conflicting:  # LA203 semantics: the parts of the module do not belong together
            findings.append(make_finding(
                "LA203", f"{len(lora.problems.conflicting)} module(s) hold tensors of two layouts or kinds for one "
                "module (e.g. a kohya and a PEFT pair, or LoRA and LoHa factors); they were not merged and not "
                "audited (LA203: parts that do not fit together)", per_item("modules", lora.problems.conflicting)))
        if lora.problems.bad_alpha:  # LA203 semantics: a part of the module (its alpha) is unusable
            findings.append(make_finding(
                "LA203", f"{len(lora.problems.bad_alpha)} module(s) have an unusable alpha (not a finite number "
                "or unreadable); their weights were audited with alpha = rank (LA203: a part that does not "
                "fit)", per_item("modules", lora.problems.bad_alpha)))
        loda = [m for m in lora.modules if m.kind == "loda"]
        if loda:
            findings.append(make_finding(
                "LA204", f"{len(loda)} LoDA module(s): non-linear adapters, measured (statistics, attack) through "
                f"their first-order dW = act'(0) * scale * up @ down",
                {"activation": lora.metadata.get(ACTIVATION_KEY, f"{DEFAULT_ACTIVATION} (not stated)"),
                 "first_order_scale": float(loda[0].scale), "rank": int(loda[0].rank),
                 **items("modules", [m.name for m in loda])}))
        problems = lora.problems
        if not lora.modules and not (problems.orphaned or problems.mismatched or problems.conflicting):
            findings.append(make_finding("LA003", f"none of the {len(lora.tensors)} tensors belong to a known LoRA layout",
                                         items("tensors", lora.problems.unrecognised)))
        return findings
