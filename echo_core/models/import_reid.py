"""Import the reference re-identification net (`models/reidentification_<dataset>`) as our ReidNet folder.

The released folder holds the privacy JSON config (`config.json`) and `<basename(folder)>_best_network.pth`, a
torch state dict of `SiameseNetwork` (seed-systems §5.1): torchvision's resnet50 under `model.` with conv1
Conv2d(4, 64, 7, 2, 3), fc Linear(2048, 128), and `fc_end` Linear(128, 1). It is read with
`torch.load(..., weights_only=True)` only (tensors and plain containers; never arbitrary pickled objects),
renamed by an explicit key map onto ReidNet's "resnet50-bn" variant (the same layers at the same places, with
the reference's BatchNorm), and saved as safetensors. τ is not in the folder: the caller calibrates it on our
latent store (`echo_core.privacy.calibrate`), exactly as after `privacy train`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from echo_core.errors import WeightsError
from echo_core.models.imports import (
    add_source,
    provenance,
    raise_mismatches,
    read_json,
    require_files,
    tensor_mismatches,
    write_folder,
)
from echo_core.models.reid import EMBED_DIM, LATENT_SHAPE, REID_CONFIG_FILE, VARIANTS, ReidNet
from echo_core.privacy.calibrate import PrivacyConfig, calibrate

VARIANT = "resnet50-bn"
CONFIG_FILE = "config.json"
_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# the reference's JSON config keys our ReidNet reproduces (key → required value)
EXPECTED_CONFIG = {"siamese_architecture": "ResNet-50", "n_channels": LATENT_SHAPE[0], "n_features": EMBED_DIM,
                   "image_size": LATENT_SHAPE[1]}
_FIX = "pass the released models/reidentification_<dataset> folder (config.json + <name>_best_network.pth)"


def weights_name(folder: Path) -> str:
    """The reference names the weights after the folder (`privacy/apply.py`)."""
    return f"{folder.name}_best_network.pth"


def _conv_bn(src: str, dst_conv: str, dst_bn: str, conv: str, bn: str) -> dict[str, str]:
    return {f"{src}.{conv}.weight": f"{dst_conv}.weight",
            **{f"{src}.{bn}.{k}": f"{dst_bn}.{k}" for k in _BN_KEYS}}


def reference_key_map(variant: str = VARIANT) -> dict[str, str]:
    """Reference state-dict key → ReidNet key. torchvision's resnet names (conv1/bn1, layer<i>.<j>.conv<k>/bn<k>,
    downsample.0/1, fc) become ResNetEncoder's positional ones (stem.0/1, stages.<n>.body.<0|3|6>/<1|4|7>,
    skip.0/1, fc); fc_end is the Siamese head."""
    layout = VARIANTS[variant]
    keys = _conv_bn("model", "encoder.stem.0", "encoder.stem.1", "conv1", "bn1")
    index = 0
    for stage, count in enumerate(layout.layers, start=1):
        for j in range(count):
            src, dst = f"model.layer{stage}.{j}", f"encoder.stages.{index}"
            for k, position in ((1, 0), (2, 3), (3, 6)):  # body = conv, norm, relu, conv, norm, relu, conv, norm
                keys |= _conv_bn(src, f"{dst}.body.{position}", f"{dst}.body.{position + 1}", f"conv{k}", f"bn{k}")
            if j == 0:  # torchvision gives every stage's first block a projection shortcut, as _shortcut does
                keys |= _conv_bn(src, f"{dst}.skip.0", f"{dst}.skip.1", "downsample.0", "downsample.1")
            index += 1
    for name in ("weight", "bias"):
        keys[f"model.fc.{name}"] = f"encoder.fc.{name}"
        keys[f"fc_end.{name}"] = f"head.{name}"
    return keys


def read_reference_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a .pth file, loaded with weights_only=True (a `{"model_state_dict": ...}` checkpoint
    is unwrapped); a WeightsError naming the file for anything else."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise WeightsError(f"{path} is not a plain torch state dict (refused without unpickling objects): "
                           f"{str(exc).splitlines()[0][:200]}", fix=_FIX) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("model_state_dict"), Mapping):
        obj = obj["model_state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} holds no state dict of tensors", fix=_FIX)
    return dict(obj)


def check_reference_config(folder: Path) -> dict[str, Any]:
    """The privacy JSON config, after checking the architecture keys against ours."""
    config = read_json(folder / CONFIG_FILE)
    problems = [f"{CONFIG_FILE} {key} {config.get(key)!r}, expected {want!r}"
                for key, want in EXPECTED_CONFIG.items() if config.get(key) != want]
    raise_mismatches(problems, f"re-identification folder {folder}", _FIX)
    return config


def convert_reference(folder: str | os.PathLike) -> tuple[ReidNet, dict[str, Any]]:
    """(ReidNet "resnet50-bn" in eval mode holding the released weights, the reference config)."""
    folder = Path(folder)
    require_files(folder, [CONFIG_FILE, weights_name(folder)], "re-identification")
    config = check_reference_config(folder)
    state = read_reference_weights(folder / weights_name(folder))
    net = ReidNet(VARIANT)
    ours = net.state_dict()
    key_map = reference_key_map()
    expected = {src: tuple(ours[dst].shape) for src, dst in key_map.items()}
    raise_mismatches(tensor_mismatches({k: tuple(v.shape) for k, v in state.items()}, expected,
                                       weights_name(folder)), f"re-identification folder {folder}", _FIX)
    net.load_state_dict({key_map[k]: v.to(ours[key_map[k]].dtype) for k, v in state.items()}, strict=True)
    return net.eval(), config


def import_reid(folder: str | os.PathLike, out: str | os.PathLike, *, roots: Sequence[str | os.PathLike],
                vae: Mapping[str, Any], privacy: PrivacyConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check and convert the released folder, calibrate τ on the latent stores `roots` (which must come from
    `vae`), and write the ReidNet folder `out` whole or not at all → (provenance, privacy.json's content)."""
    folder = Path(folder)
    net, config = convert_reference(folder)
    source = provenance(folder, [weights_name(folder)], config, vae)
    record: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        # the reference's positive pairs are two frames of one video (seed-systems §5.2)
        net.save_pretrained(tmp, vae_sha256=vae["sha256"], train={"identity": "video", "source": "imported"})
        add_source(tmp / REID_CONFIG_FILE, source)
        record.update(calibrate(tmp, roots, privacy))

    write_folder(out, write)
    return source, record
