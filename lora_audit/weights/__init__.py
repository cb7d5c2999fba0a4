"""LoRA weight files: safe reading, layout normalisation, weight deltas and base-model detection."""

from lora_audit.weights.lora_file import LoraFile, open_lora
from lora_audit.weights.modules import LoraModule

__all__ = ["LoraFile", "LoraModule", "open_lora"]
