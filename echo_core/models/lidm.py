"""The LIDM: a latent IMAGE diffusion model that generates synthetic end-diastolic "hearts" (one VAE latent
frame each), and its self-describing folder format.

EchoNet-Synthetic trains one unconditional diffusers `UNet2DModel` per dataset; EchoDream conditions it on
the CardiacNet class through a 1-wide mid-block cross-attention (seed-systems §3.2–3.3), where a softmax
over one key is always 1, so the class is a query-independent bias. Here a class-conditioned LIDM uses
`UNet2DModel`'s class embedding instead: the class is added to the time embedding, which scales and shifts
every ResNet block, with one extra row, the **null class**, for classifier-free guidance (EchoDream's null
was an all-zero id, i.e. class 0, which is a real class).

Latents are 14×14 (112 px / 8); a 4-level UNet cannot halve that three times, so they are replicate-padded
by 1 px to 16×16 and cropped back, as the LVDM does.

Folder (`LidmNet.save_pretrained` → `LidmNet.from_pretrained`):
    config.json + diffusion_pytorch_model.safetensors   the UNet2DModel as a diffusers folder
    lidm_config.json                                    format, step, dtype, the config that made it ("train"),
                                                        the VAE the latents came from (sha256, scaling factor)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from echo_core.config import StrictModel
from echo_core.diffusion.objectives import DDPMObjectiveConfig, ObjectiveConfig
from echo_core.models.loading import load_pretrained, read_folder_meta
from echo_core.models.unet import LATENT_CHANNELS, LATENT_PAD
from echo_core.utils.atomic import write_json_atomic

LIDM_FORMAT = "echoforge-lidm/1"
LIDM_CONFIG_FILE = "lidm_config.json"

_ATTN_DOWN, _DOWN, _ATTN_UP, _UP = "AttnDownBlock2D", "DownBlock2D", "AttnUpBlock2D", "UpBlock2D"
UNET2D_CONFIGS: dict[str, dict[str, Any]] = {
    # EchoNet-Synthetic's LIDM (seed-systems §3.2): attention in the three upper levels.
    "reference": {
        "block_out_channels": (128, 256, 256, 512),
        "layers_per_block": 2,
        "down_block_types": (_ATTN_DOWN, _ATTN_DOWN, _ATTN_DOWN, _DOWN),
        "up_block_types": (_UP, _ATTN_UP, _ATTN_UP, _ATTN_UP),
        "attention_head_dim": 8,
    },
    # CPU tests and the demo (~0.9 M parameters).
    "tiny": {
        "block_out_channels": (32, 64),  # GroupNorm(32): channels must be multiples of 32
        "layers_per_block": 1,
        "down_block_types": (_ATTN_DOWN, _DOWN),
        "up_block_types": (_UP, _ATTN_UP),
        "attention_head_dim": 8,
    },
}


class LidmModelConfig(StrictModel):
    """`train_lidm.model`: a named UNet2DModel config plus any UNet2DModel kwarg in `overrides`."""

    name: str = "reference"
    latent_size: int = Field(14, gt=0)
    overrides: dict[str, Any] = Field(default_factory=dict)


class LidmConditioning(StrictModel):
    """`train_lidm.conditioning`: unconditional (EchoNet-Synthetic) or class-conditioned (EchoDream)."""

    class_id: bool = False
    num_classes: int | None = Field(None, ge=1)
    p_uncond: float = Field(0.1, ge=0, le=1)  # class dropout to the null class, so guidance is trained

    @model_validator(mode="after")
    def _classes_given(self) -> LidmConditioning:
        if self.class_id and self.num_classes is None:
            raise ValueError("conditioning.class_id needs conditioning.num_classes (e.g. 4 for CardiacNet)")
        return self

    @property
    def null_class(self) -> int | None:
        """The null class id (one past the real ones), None for an unconditional model."""
        return self.num_classes if self.class_id else None


class LidmSpec(StrictModel):
    """What an LIDM is. The training config extends it (`echo_core.training.lidm.LidmTrainConfig`)."""

    model: LidmModelConfig = Field(default_factory=LidmModelConfig)
    conditioning: LidmConditioning = Field(default_factory=LidmConditioning)
    objective: ObjectiveConfig = Field(default_factory=DDPMObjectiveConfig)

    @classmethod
    def from_train_dump(cls, train: Mapping[str, Any]) -> LidmSpec:
        return cls.model_validate({k: v for k, v in train.items() if k in cls.model_fields})


def build_unet2d(spec: LidmSpec):
    """A fresh UNet2DModel (4 → 4 channels on the padded latent; + the class embedding with its null row)."""
    name = spec.model.name
    if name not in UNET2D_CONFIGS:
        raise ValueError(f"unknown LIDM UNet config {name!r}; choose one of {sorted(UNET2D_CONFIGS)}")
    from diffusers import UNet2DModel  # heavy import kept off the CLI start-up path

    cond = spec.conditioning
    num_class_embeds = cond.num_classes + 1 if cond.class_id else None
    return UNet2DModel(sample_size=spec.model.latent_size + 2 * LATENT_PAD, in_channels=LATENT_CHANNELS,
                       out_channels=LATENT_CHANNELS, num_class_embeds=num_class_embeds,
                       **{**UNET2D_CONFIGS[name], **spec.model.overrides})


class LidmNet(nn.Module):
    """UNet2DModel + 14→16 padding + the class plumbing: what the trainer optimises and the sampler calls."""

    def __init__(self, unet: nn.Module, spec: LidmSpec):
        super().__init__()
        self.unet, self.spec = unet, spec

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, class_ids: torch.Tensor | None = None) -> torch.Tensor:
        """x_t: (B, C, h, w); t: (B,) model time; class_ids: (B,) long (null class = `null_class`), or None
        for an unconditional model → prediction (B, C, h, w)."""
        padded = F.pad(x_t, (LATENT_PAD,) * 4, mode="replicate")
        labels = class_ids.long() if self.spec.conditioning.class_id else None
        out = self.unet(padded, t, class_labels=labels).sample
        return out[..., LATENT_PAD:-LATENT_PAD, LATENT_PAD:-LATENT_PAD]

    def class_tokens(self, class_ids: list[int] | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(condition, null) class tensors (B,) for the sampler; an unconditional model gets dummies."""
        cond = self.spec.conditioning
        if not cond.class_id:
            zeros = torch.zeros(batch, dtype=torch.long)
            return zeros, zeros
        ids = torch.as_tensor(class_ids, dtype=torch.long)
        return ids, torch.full((batch,), cond.null_class, dtype=torch.long)

    def save_pretrained(self, folder: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                        step: int | None = None, vae: Mapping[str, Any] | None = None) -> Path:
        """Write the folder (module docstring); `vae`: {sha256, scaling_factor} of the latents' VAE."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if dtype == torch.float32:
            self.unet.save_pretrained(folder, safe_serialization=True)
        else:  # a slim export: cast a copy, so the trained module keeps its float32 weights
            import copy

            copy.deepcopy(self.unet).to(dtype).save_pretrained(folder, safe_serialization=True)
        write_json_atomic(folder / LIDM_CONFIG_FILE, {
            "format": LIDM_FORMAT, "step": step, "dtype": str(dtype).removeprefix("torch."),
            "train": self.spec.model_dump(mode="json"), "vae": dict(vae or {}),
            "latent_shape": [LATENT_CHANNELS, self.spec.model.latent_size, self.spec.model.latent_size],
        })
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> LidmNet:
        """The float32 net in eval mode from a folder written by `save_pretrained`."""
        from diffusers import UNet2DModel

        meta = read_lidm_meta(folder)
        spec = LidmSpec.from_train_dump(meta["train"])
        return cls(load_pretrained(UNet2DModel, folder).float(), spec).eval()


def read_lidm_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """lidm_config.json of an LIDM folder; a WeightsError naming the folder when it is not one."""
    return read_folder_meta(folder, LIDM_CONFIG_FILE, LIDM_FORMAT, what="an LIDM",
                            fix="pass the folder written by `echoforge lidm train` (OUT/unet_ema) or a "
                                "models:/echo-lidm@<dataset> URI")


def build_lidm_net(spec: LidmSpec) -> LidmNet:
    """A freshly initialised LidmNet (seed torch first for reproducible weights)."""
    return LidmNet(build_unet2d(spec), spec)
