"""A tiny real LVDM bundle for sampling/serving tests: the trainer's own folder format (tiny SVD UNet +
ConditionEncoder via `echo_core.models.lvdm.build_lvdm_net` / `LvdmNet.save_pretrained`) + a tiny VAE + the
default frame."""

from __future__ import annotations

from pathlib import Path

import torch

from echo_core.diffusion.objectives import DDPMObjectiveConfig, FlowObjectiveConfig
from echo_core.generation.pipeline import build_serving_bundle
from echo_core.latents.clips import LatentDatasetConfig
from echo_core.models.conditioning import ConditioningConfig
from echo_core.models.lvdm import build_lvdm_net
from echo_core.models.unet import UNetConfig
from echo_core.models.vae import build_vae
from echo_core.training.lvdm import LvdmTrainConfig

WINDOW = 4
DEFAULT_FRAME = Path(__file__).resolve().parents[2] / "pipelines" / "serving" / "default_frame.png"


def tiny_config(kind: str = "ef", flow: bool = False) -> LvdmTrainConfig:
    conditioning = (ConditioningConfig(types=["ef"], dim=1) if kind == "ef"
                    else ConditioningConfig(types=["class_id"], dim=8, num_classes=4))
    objective = FlowObjectiveConfig() if flow else DDPMObjectiveConfig()
    return LvdmTrainConfig(model=UNetConfig(name="tiny"), conditioning=conditioning, objective=objective,
                           dataset=LatentDatasetConfig(num_frames=WINDOW, target_fps=25.0))


def make_lvdm_folder(out: Path, kind: str = "ef", flow: bool = False) -> Path:
    cfg = tiny_config(kind, flow)
    torch.manual_seed(cfg.seed)  # what the trainer does before building the model
    return build_lvdm_net(cfg).save_pretrained(out)


def make_vae_folder(out: Path) -> Path:
    torch.manual_seed(0)
    build_vae("tiny", scaling_factor=0.5).save_pretrained(out)
    return out


def make_bundle(root: Path, kind: str = "ef", flow: bool = False) -> Path:
    """root/bundle: LVDM folder + vae/ + the default frame (root/lvdm and root/vae are kept too)."""
    lvdm = make_lvdm_folder(root / "lvdm", kind, flow)
    vae = make_vae_folder(root / "vae")
    return build_serving_bundle(lvdm, vae, root / "bundle", default_frame=DEFAULT_FRAME)
