"""Tiny stand-ins for the reference systems' released model folders, in their exact layout (seed-systems §1, §3,
§5): `lvdm/` and `lidm_<ds>/` are diffusers folders written by `save_pretrained` beside a training config.yaml
(OmegaConf-style, interpolations unresolved); `reidentification_<ds>/` is the privacy JSON config and a plain
torch state dict under torchvision resnet50 names (torchvision is not installed: the names come from the
inverse of the import's key map, and the test checks a few against torchvision's own)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from echo_core.models.import_reid import reference_key_map, weights_name
from echo_core.models.lidm import UNET2D_CONFIGS
from echo_core.models.reid import ReidNet
from echo_core.models.unet import UNET_CONFIGS

FRAMES = 4
SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
             "beta_schedule": "linear", "variance_type": "fixed_small", "clip_sample": True,
             "clip_sample_range": 4.0, "prediction_type": "v_prediction", "thresholding": False,
             "timestep_spacing": "leading", "steps_offset": 0}


def _config_yaml(unet: dict, outputs: list[str], noise_offset: float, **changes) -> dict:
    doc = {"globals": {"target_fps": 32, "target_nframes": FRAMES, "outputs": outputs},
           "datasets": [{"name": "Latent", "active": True,
                         "params": {"root": "data/latents/dynamic", "target_fps": "${globals.target_fps}",
                                    "target_nframes": "${globals.target_nframes}", "outputs": "${globals.outputs}"}}],
           "unet": unet, "noise_scheduler": dict(SCHEDULER), "noise_offset": noise_offset, "seed": 42}
    for key, value in changes.items():
        section, _, leaf = key.rpartition(".")
        (doc[section] if section else doc)[leaf] = value
    return doc


def reference_lvdm_unet(**overrides):
    """The tiny SVD UNet as the reference builds it: 8 in, EF as a 1-d token, `addition_time_embed_dim` and
    `projection_class_embeddings_input_dim` 1, sample_size 14."""
    from diffusers import UNetSpatioTemporalConditionModel

    cfg = {**UNET_CONFIGS["tiny"], "addition_time_embed_dim": 1}
    cfg = {**cfg, "sample_size": 14, "in_channels": 8, "out_channels": 4, "cross_attention_dim": 1,
           "num_frames": FRAMES, "projection_class_embeddings_input_dim": 1, **overrides}
    torch.manual_seed(1)
    return UNetSpatioTemporalConditionModel(**cfg)


def write_reference_lvdm(folder: Path, *, yaml_changes: dict | None = None, **unet_overrides) -> Path:
    """`models/lvdm`: the EMA UNet folder + config.yaml (EchoNet-Synthetic's default.yaml, tiny UNet)."""
    unet = reference_lvdm_unet(**unet_overrides)
    unet.save_pretrained(folder, safe_serialization=True)
    doc = _config_yaml({"_class_name": "UNetSpatioTemporalConditionModel", **dict(unet.config)},
                       ["video", "lvef", "image"], 0.1, **(yaml_changes or {}))
    (folder / "config.yaml").write_text(yaml.safe_dump(_plain(doc), sort_keys=False))
    return folder


def reference_lidm_unet(**overrides):
    from diffusers import UNet2DModel

    torch.manual_seed(2)
    return UNet2DModel(**{**UNET2D_CONFIGS["tiny"], "sample_size": 14, "in_channels": 4, "out_channels": 4,
                          **overrides})


def write_reference_lidm(folder: Path, *, yaml_changes: dict | None = None, **unet_overrides) -> Path:
    """`models/lidm_<ds>`: the unconditional UNet2DModel folder + config.yaml (EchoNet-Synthetic dynamic.yaml)."""
    unet = reference_lidm_unet(**unet_overrides)
    unet.save_pretrained(folder, safe_serialization=True)
    doc = _config_yaml({"_class_name": "UNet2DModel", **dict(unet.config)}, ["image"], 0.0,
                       **(yaml_changes or {}))
    (folder / "config.yaml").write_text(yaml.safe_dump(_plain(doc), sort_keys=False))
    return folder


def reference_reid_state(seed: int = 3) -> tuple[ReidNet, dict[str, torch.Tensor]]:
    """(our "resnet50-bn" net with random weights AND random BatchNorm statistics, the same weights under the
    reference SiameseNetwork's names)."""
    torch.manual_seed(seed)
    net = ReidNet("resnet50-bn").eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial statistics, so the import must carry them
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(7)
    ours = net.state_dict()
    return net, {src: ours[dst].clone() for src, dst in reference_key_map().items()}


def write_reference_reid(folder: Path, state: dict[str, torch.Tensor], **config_changes) -> Path:
    """`models/reidentification_<ds>`: config.json + <name>_best_network.pth (a plain dict of tensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"experiment_description": folder.name, "image_path": "data/latents/dynamic/FileList.csv",
              "siamese_architecture": "ResNet-50", "data_handling": "balanced", "n_channels": 4,
              "n_features": 128, "image_size": 14, "loss": "BCEWithLogitsLoss", "transform": "pmone",
              **config_changes}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    torch.save(state, folder / weights_name(folder))
    return folder


def _plain(value):
    return json.loads(json.dumps(value))  # tuples → lists for yaml.safe_dump
