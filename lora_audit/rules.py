"""The catalogue of rules: stable ids, default severities, titles and remediations.

Rule ids never change meaning. A policy file may disable a rule or change its severity; reports
(SARIF in particular) list every rule that produced a finding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lora_audit.evidence import clean
from lora_audit.results import Finding, Severity


@dataclass(frozen=True)
class Rule:
    id: str
    name: str  # kebab-case short name, used in SARIF and policy files as an alias of the id
    severity: Severity
    title: str
    remediation: str


_RULES = [
    # File-level problems.
    Rule("LA001", "unreadable-file", Severity.HIGH, "File is not a readable safetensors file",
         "Re-export the LoRA with a current trainer; a corrupt or truncated file cannot be audited."),
    Rule("LA002", "pickle-format", Severity.HIGH, "Pickle checkpoint: loading it can run arbitrary code",
         "Do not load it with torch.load. Convert it in a sandbox to safetensors "
         "(e.g. safetensors.torch.save_file(torch.load(path, weights_only=True), 'out.safetensors')) and scan that."),
    Rule("LA003", "no-lora-tensors", Severity.LOW, "No LoRA tensors recognised",
         "Check that this is a LoRA file; lora-audit recognises kohya, LyCORIS and diffusers/PEFT layouts."),
    Rule("LA004", "link-not-followed", Severity.INFO, "A symbolic link out of the scanned folder was not followed",
         "Scan the folder it points into, or pass --follow-links to read such links where they point."),
    Rule("LA005", "federated-update", Severity.INFO, "Federated-learning update: gradients or a LoRA update, not a LoRA",
         "A client's shared update can be inverted back into its training photos "
         "(lora-audit invert-gradients); share it only with clipping and noise (DP-SGD) or secure aggregation."),
    # Metadata leaks.
    Rule("LA101", "caption-tags", Severity.HIGH, "Training captions and tags are stored in the metadata",
         "Remove ss_tag_frequency (lora-audit strip, or train with --no_metadata)."),
    Rule("LA102", "dataset-folders", Severity.HIGH, "Dataset folder names are stored in the metadata",
         "Remove ss_dataset_dirs, ss_reg_dataset_dirs and ss_datasets (lora-audit strip)."),
    Rule("LA103", "local-path", Severity.MEDIUM, "Absolute or home-directory paths are stored in the metadata",
         "Remove the keys that hold paths of the training machine (lora-audit strip)."),
    Rule("LA104", "free-text", Severity.LOW, "Free-text fields may describe the subject or the author",
         "Review the text; remove it if it names a person (lora-audit strip)."),
    Rule("LA105", "trigger-phrase", Severity.MEDIUM, "The trigger phrase is stored in the metadata",
         "The trigger lets anyone render the subject directly; remove it unless you mean to publish it."),
    Rule("LA106", "embedded-image", Severity.HIGH, "Images are embedded in the metadata",
         "Embedded cover images and thumbnails can show the subject and keep generation parameters "
         "in PNG text chunks; remove them (lora-audit strip)."),
    Rule("LA107", "trainer-config", Severity.MEDIUM, "A trainer configuration dump is stored in the metadata",
         "Trainer configs carry paths, names and captions; remove them (lora-audit strip)."),
    Rule("LA108", "dp-guarantee", Severity.INFO, "Trained with differential privacy: the stated guarantee",
         "Read what the epsilon protects: one training image, not the person, when the person is in every "
         "photo. Check the identity verdict (--references) as well: DP bounds one photo's influence only."),
    # Weight problems.
    Rule("LA201", "non-finite-weights", Severity.HIGH, "Weights contain NaN or Inf values",
         "The training diverged or the file is damaged; retrain or re-export."),
    Rule("LA202", "orphaned-tensor", Severity.MEDIUM, "LoRA tensors without their partner",
         "A down/up (A/B) pair is incomplete; the module cannot be applied. Re-export the LoRA."),
    Rule("LA203", "shape-mismatch", Severity.MEDIUM, "LoRA module that cannot be applied as stored",
         "Its down and up matrices do not share a rank, its alpha is not a usable number, or two layouts "
         "claim the same module (the message says which); loaders disagree on such a module. Re-export the LoRA."),
    Rule("LA204", "non-linear-adapter", Severity.INFO, "Non-linear adapters (LoDA): measured through their linearisation",
         "The weight statistics and the attack read dW = act'(0) * scale * up @ down, the adapter's first-order "
         "effect; its non-linear part is not measured. Scan the LoRA-adapter variant too if you have one."),
    # Identity leakage from the weights (the weight-to-image attack).
    Rule("LA301", "identity-reconstruction", Severity.HIGH, "The weights alone reconstruct one identity",
         "Anyone holding the file can render one face from its weights, more consistently than the measured "
         "LoRAs fine-tuned on several people or on objects (the evidence says how many): a sign that it holds "
         "one person (scan with --references to learn whether it is you). Do not publish a LoRA of a private "
         "person; if it must be shared, train it with differential privacy and re-scan."),
    Rule("LA302", "identity-attack-clean", Severity.INFO, "The identity attack found no consistent identity",
         "No action needed from this measure; look at the reconstruction grid: consistency is not identity."),
    Rule("LA303", "identity-attack-unavailable", Severity.INFO, "The identity attack was not run",
         "Give the inputs it names to audit the identity leak of this base family: --base alone runs guidance "
         "extraction, --attack-model with it the weight-to-image VAE."),
    Rule("LA304", "identity-match-owner", Severity.HIGH, "The reconstructions match the owner's face",
         "Anyone holding the file can render faces that face recognition takes for this person. "
         "Do not publish a LoRA of a private person; if it must be shared, train it with "
         "differential privacy and re-scan."),
    Rule("LA305", "identity-no-match", Severity.INFO, "The reconstructions do not match the owner's face",
         "No action needed from this measure at this threshold; it bounds this attack only, "
         "not every attack. Look at the reconstruction grid as well."),
    Rule("LA306", "reference-photo-unused", Severity.INFO, "Some of the owner's photos were not used",
         "Give photos with a clear, roughly frontal face (the largest face in each photo is used); "
         "the verdict used the others."),
    Rule("LA307", "identity-audit-incomplete", Severity.HIGH, "The identity audit could not be completed",
         "The attack failed on this file, or none of the owner's photos could be used for the verdict; "
         "the message says which. Fix the cause and re-scan: an incomplete audit says nothing about the leak."),
    Rule("LA308", "metadata-trigger-identity", Severity.HIGH, "The trigger in the metadata renders the identity",
         "Anyone holding the file can prompt it with the trigger its metadata names and render the person: "
         "remove the trigger and caption metadata (lora-audit strip) before sharing; the weights may still leak "
         "the person (LA301, LA304)."),
    Rule("LA309", "metadata-trigger-clean", Severity.INFO, "The trigger in the metadata renders no consistent identity",
         "No action needed from this measure; the trigger and caption metadata (LA101, LA105) are still worth removing."),
    Rule("LA310", "identity-consistency-unspecific", Severity.MEDIUM,
         "The weights render a consistent face, as LoRAs of no one person can",
         "The attack renders one face from the weights, but LoRAs fine-tuned on several people or on objects "
         "render faces as consistent (or no such null is measured for this attack), so this neither shows that "
         "the file holds a person nor that it does not. Scan with --references to learn whether it is you "
         "(LA304/LA305); do not publish a LoRA of a private person."),
]

RULES: dict[str, Rule] = {r.id: r for r in _RULES}
RULE_NAMES: dict[str, str] = {r.name: r.id for r in _RULES}


def make_finding(rule_id: str, message: str, evidence: Mapping[str, object] | None = None) -> Finding:
    """A finding of ``rule_id`` with the rule's default severity, title and remediation; its
    ``evidence`` checked and rounded (:func:`lora_audit.evidence.clean`)."""
    rule = RULES[rule_id]
    return Finding(rule_id=rule.id, severity=rule.severity, title=rule.title, message=message,
                   evidence=clean(evidence or {}), remediation=rule.remediation)
