"""The LVDM network (denoiser + condition encoder) and its self-describing folder format.

A folder written by `LvdmNet.save_pretrained` is what training exports, the registry stores, and sampling,
serving and evaluation load with `LvdmNet.from_pretrained` (a diffusers-style round trip):

    config.json + diffusion_pytorch_model.safetensors   the UNet as a diffusers folder (at the root)
    conditioning.safetensors                            the condition encoder's trained weights
    lvdm_config.json                                    format, step, dtype, the full config that made it
                                                        ("train"), objective, text-encoder source

Loading needs only the part of that config which shapes the network and its inputs (`LvdmSpec`); the
training-only parts (optimizer, EMA, checkpoints, ...) stay in the file as lineage.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from echo_core.config import StrictModel
from echo_core.diffusion.objectives import DDPMObjectiveConfig, ObjectiveConfig
from echo_core.latents.clips import LatentDatasetConfig
from echo_core.models.conditioning import ConditionEncoder, ConditioningConfig, FrozenTextEncoder
from echo_core.models.loading import load_pretrained
from echo_core.models.unet import LatentVideoDenoiser, UNetConfig, build_denoiser
from echo_core.utils.atomic import write_json_atomic

LVDM_FORMAT = "echoforge-lvdm/1"
LVDM_CONFIG_FILE = "lvdm_config.json"
CONDITIONING_FILE = "conditioning.safetensors"
UNET_WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


class LvdmSpec(StrictModel):
    """What an LVDM is: network, conditioning, objective and the clips it models (length, fps, prompts).

    The training config extends it (`echo_core.training.lvdm.LvdmTrainConfig`); its fields come first there,
    so the saved `"train"` dump keeps their order."""

    model: UNetConfig = Field(default_factory=UNetConfig)
    conditioning: ConditioningConfig = Field(default_factory=ConditioningConfig)
    objective: ObjectiveConfig = Field(default_factory=DDPMObjectiveConfig)
    dataset: LatentDatasetConfig = Field(default_factory=LatentDatasetConfig)

    @model_validator(mode="after")
    def _ef_micro_condition_needs_scalar_ef(self) -> LvdmSpec:
        scalar_ef = self.conditioning.types == ["ef"] and self.conditioning.ef_mode == "scalar"
        if self.model.ef_micro_condition and not (scalar_ef and self.model.added_time_ids):
            raise ValueError("model.ef_micro_condition routes the scalar EF token into SVD's added_time_ids: "
                             "it needs model.added_time_ids: true and conditioning types [ef], ef_mode scalar")
        return self

    @classmethod
    def from_train_dump(cls, train: Mapping[str, Any]) -> LvdmSpec:
        """The spec part of a saved `"train"` dump (training-only keys are lineage, not needed here)."""
        return cls.model_validate({k: v for k, v in train.items() if k in cls.model_fields})


def read_lvdm_spec(folder: str | os.PathLike) -> LvdmSpec:
    """The spec of an LVDM folder, without loading any weights."""
    meta = json.loads((Path(folder) / LVDM_CONFIG_FILE).read_text(encoding="utf-8"))
    return LvdmSpec.from_train_dump(meta["train"])


class LvdmNet(nn.Module):
    """Denoiser + condition encoder: the one module that is optimised, EMA'd, DDP-wrapped and saved."""

    def __init__(self, denoiser: LatentVideoDenoiser, conditioner: ConditionEncoder, spec: LvdmSpec):
        super().__init__()
        self.denoiser, self.conditioner, self.spec = denoiser, conditioner, spec

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond_frame: torch.Tensor,
                conditions: Mapping[str, Any], drop: torch.Tensor | None, fps: torch.Tensor | float) -> torch.Tensor:
        """x_t: (B, C, T, h, w); t: (B,) model time; cond_frame: (B, C, h, w); drop: (B,) bool → (B, C, T, h, w)."""
        tokens = self.conditioner(conditions, drop).to(x_t.dtype)
        return self.denoiser(x_t, t, cond_frame, tokens, fps)

    def save_pretrained(self, folder: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                        step: int | None = None) -> Path:
        """Write the folder (see the module docstring) with weights cast to `dtype`. `"train"` is the full
        dump of `self.spec` (the whole training config when the trainer built this net)."""
        from safetensors.torch import load_file, save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.denoiser.unet.save_pretrained(folder, safe_serialization=True)
        weights = folder / UNET_WEIGHTS_FILE
        if dtype != torch.float32:  # slim export: recast the written file rather than copying the model
            save_file({k: v.to(dtype) for k, v in load_file(str(weights)).items()}, str(weights),
                      metadata={"format": "pt"})
        save_file({k: v.detach().to("cpu", dtype).contiguous() for k, v in self.conditioner.state_dict().items()},
                  str(folder / CONDITIONING_FILE))
        text = self.conditioner.tokens["text"].encoder.source if "text" in self.conditioner.tokens else None
        spec = self.spec
        write_json_atomic(folder / LVDM_CONFIG_FILE, {
            "format": LVDM_FORMAT, "step": step, "dtype": str(dtype).removeprefix("torch."),
            "train": spec.model_dump(mode="json"), "num_frames": spec.dataset.num_frames,
            "cross_attention_dim": spec.conditioning.dim, "text_encoder_source": text,
            "objective": spec.objective.model_dump(mode="json"),
        })
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, text_encoder: FrozenTextEncoder | None = None) -> LvdmNet:
        """The float32 net in eval mode from a folder written by `save_pretrained`; `net.spec` describes it."""
        from diffusers import UNetSpatioTemporalConditionModel
        from safetensors.torch import load_file

        folder = Path(folder)
        spec = read_lvdm_spec(folder)
        unet = load_pretrained(UNetSpatioTemporalConditionModel, folder).float()
        denoiser = LatentVideoDenoiser(unet, added_time_ids=spec.model.added_time_ids,
                                       motion_bucket=spec.model.motion_bucket,
                                       ef_micro_condition=spec.model.ef_micro_condition)
        conditioner = ConditionEncoder(spec.conditioning, text_encoder)
        conditioner.load_state_dict({k: v.float() for k, v in load_file(str(folder / CONDITIONING_FILE)).items()})
        return cls(denoiser, conditioner, spec).eval()


def build_lvdm_net(spec: LvdmSpec, text_encoder: FrozenTextEncoder | None = None) -> LvdmNet:
    """A freshly initialised LvdmNet (seed torch first for reproducible weights)."""
    conditioner = ConditionEncoder(spec.conditioning, text_encoder)
    denoiser = build_denoiser(spec.model, cross_attention_dim=conditioner.dim, num_frames=spec.dataset.num_frames)
    return LvdmNet(denoiser, conditioner, spec)
