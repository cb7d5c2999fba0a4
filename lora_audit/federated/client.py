"""A federated client in the toy world: the update it shares after training on its private photos.

One round of federated fine-tuning: the server sends the base model (``gradient``: FedSGD, the client
returns d loss / d theta of the whole UNet) or the base with a LoRA (``lora-update``: FedAvg, the
client runs ``local_steps`` SGD steps on the LoRA and returns the change of its factors). The loss is
the fine-tune's at the client's own random noise and timesteps. What is shared: the tensors, the batch
size and the model id (and the protocol's public settings); never the photos, noise or timesteps,
which :class:`ClientUpdate` keeps apart as ``secrets`` (written only on request, for audits).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from lora_audit.errors import UsageError
from lora_audit.federated.defences import Defence, apply_defence
from lora_audit.weights.update_file import FORMAT_KEY, FORMAT_VERSION
from lora_audit.federated.objective import PROMPT, Schedule, prepare_unet

ADAPTER = "lora_audit_fl"


@dataclass
class ClientConfig:
    """One client round."""

    what: str = "gradient"  # gradient | lora-update
    batch_size: int = 1
    local_steps: int = 1  # lora-update only: local SGD steps on the batch
    lr: float = 1e-2  # lora-update: the local SGD learning rate
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    lora_seed: int = 0  # the server's global LoRA initialisation (the server knows it)
    seed: int = 0  # the client's own randomness: which photos, its noise, its timesteps
    defence: Defence = field(default_factory=Defence)


@dataclass
class ClientUpdate:
    tensors: dict[str, torch.Tensor]  # what is shared, by parameter name
    metadata: dict[str, str]  # lora_audit.fl.* keys
    secrets: dict[str, torch.Tensor]  # never shared: photo indices [B], eps [K, B, C, H, W], t [K, B]
    defence_report: dict | None = None


def model_id(base) -> str:
    """``<family>:<hash of the UNet weights>``: which model the update is a gradient of (no local path)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(base.unet.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    return f"{base.family}:{digest.hexdigest()[:16]}"


@contextlib.contextmanager
def lora_adapter(base, config: ClientConfig):
    """The server's global LoRA (deterministic in ``config.lora_seed``) on the base UNet for the block:
    yields {PEFT key (``unet.<module>.lora_A.weight``): parameter}; the UNet is restored afterwards."""
    from diffusers.utils import recurse_remove_peft_layers
    from peft import LoraConfig, inject_adapter_in_model

    with torch.random.fork_rng():
        torch.manual_seed(config.lora_seed)
        inject_adapter_in_model(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                                           target_modules=list(config.lora_targets)), base.unet, adapter_name=ADAPTER)
    try:
        params = {f"unet.{name.replace(f'.{ADAPTER}', '')}": p for name, p in base.unet.named_parameters()
                  if f".{ADAPTER}." in name}
        yield params
    finally:
        recurse_remove_peft_layers(base.unet)
        base.unet.__dict__.pop("peft_config", None)


def shared_parameters(base) -> dict[str, torch.nn.Parameter]:
    """The parameters whose gradient a FedSGD client shares: the whole UNet, ``unet.<name>``."""
    return {f"unet.{name}": p for name, p in base.unet.named_parameters()}


def client_update(base, photos: np.ndarray, config: ClientConfig) -> ClientUpdate:
    """The update of one client on ``photos`` [N, H, W, 3] in [0, 1] (a batch of ``config.batch_size``
    of them, drawn with ``config.seed``)."""
    if config.what not in ("gradient", "lora-update"):
        raise UsageError(f"unknown update kind {config.what!r}: gradient or lora-update")
    if config.batch_size > len(photos):
        raise UsageError(f"a batch of {config.batch_size} needs at least as many photos; {len(photos)} given")
    if config.what == "gradient" and config.local_steps != 1:
        raise UsageError("a gradient is one step: --local-steps applies to --what lora-update")
    rng = np.random.default_rng(config.seed)
    index = np.sort(rng.choice(len(photos), size=config.batch_size, replace=False))  # [B]
    generator = torch.Generator().manual_seed(config.seed)
    prepare_unet(base.unet)
    base.unet.eval()
    base.unet.requires_grad_(True)
    schedule = Schedule.of(base.train_scheduler(), base.device)
    with torch.no_grad():
        cond = base.encode_prompt([PROMPT]).detach()  # [1, L, D]
        x0 = base.to_model_input(torch.as_tensor(photos[index], dtype=torch.float32))  # [B, C, H, W]
    steps = config.local_steps if config.what == "lora-update" else 1
    eps = torch.randn((steps, *x0.shape), generator=generator).to(x0.device)  # [K, B, C, H, W]
    t = torch.randint(0, schedule.steps, (steps, len(x0)), generator=generator).to(x0.device)  # [K, B]
    meta = {"what": config.what, "batch_size": config.batch_size, "model_id": model_id(base), "prompt": PROMPT,
            "local_steps": steps}
    report = None
    if config.what == "gradient":
        params = shared_parameters(base)
        grads, report = apply_defence(base.unet, list(params.values()), cond, schedule, x0, eps[0], t[0],
                                      config.defence, generator, dataset_size=len(photos), steps=1)
        tensors = dict(zip(params, grads))
    else:
        base.unet.requires_grad_(False)
        with lora_adapter(base, config) as params:
            start = {k: p.detach().clone() for k, p in params.items()}
            for k in range(steps):
                grads, report = apply_defence(base.unet, list(params.values()), cond, schedule, x0, eps[k], t[k],
                                              config.defence, generator, dataset_size=len(photos), steps=steps)
                with torch.no_grad():
                    for p, g in zip(params.values(), grads):
                        p -= config.lr * g
            tensors = {k: (p.detach() - start[k]) for k, p in params.items()}
        meta.update({"lr": config.lr, "lora_rank": config.lora_rank, "lora_alpha": config.lora_alpha,
                     "lora_targets": ",".join(config.lora_targets), "lora_seed": config.lora_seed})
    if report is not None:
        import json

        meta["defence"] = json.dumps(report, sort_keys=True)
    metadata = {FORMAT_KEY: FORMAT_VERSION, **{f"lora_audit.fl.{k}": str(v) for k, v in meta.items()}}
    secrets = {"index": torch.as_tensor(index), "eps": eps.cpu(), "t": t.cpu()}
    return ClientUpdate(tensors, metadata, secrets, report)
