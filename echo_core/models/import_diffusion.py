"""Import the reference LVDM (`models/lvdm`) and LIDMs (`models/lidm_<dataset>`) as our own folders.

What the conversion changes, and why the network computes exactly the same function afterwards:
- LVDM `add_embedding.linear_1.weight` (D, 1) → (D, 3), zero-padded: the reference feeds one all-zero added
  time id through `addition_time_embed_dim: 1`, whose sinusoidal embedding is identically zero, so the layer
  only ever contributes its bias; our denoiser feeds three zero ids (`make_added_time_ids`, disabled).
- `sample_size` 14 → 16: metadata only (both pad 14×14 latents to 16×16 by replication).
Everything else (tensor names, shapes, values) is kept as released.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from echo_core.errors import WeightsError
from echo_core.latents.clips import LatentDatasetConfig
from echo_core.models.conditioning import ConditionEncoder, ConditioningConfig
from echo_core.models.imports import (
    REFERENCE_CONFIG,
    UNET_CONFIG,
    UNET_WEIGHTS,
    add_source,
    config_mismatches,
    expected_state,
    objective_from_reference,
    provenance,
    raise_mismatches,
    read_json,
    read_reference_config,
    require_files,
    safetensors_shapes,
    tensor_mismatches,
    write_folder,
)
from echo_core.models.lidm import LIDM_CONFIG_FILE, LidmModelConfig, LidmNet, LidmSpec, build_unet2d
from echo_core.models.lvdm import LVDM_CONFIG_FILE, LvdmNet, LvdmSpec, build_lvdm_net
from echo_core.models.unet import LatentVideoDenoiser, UNetConfig

TIME_IDS_WEIGHT = "add_embedding.linear_1.weight"
_LVDM_CLASS, _LIDM_CLASS = "UNetSpatioTemporalConditionModel", "UNet2DModel"
_REFERENCE_FIX = "pass the released folder of the matching reference model, or --config for its UNet size"


# ---------------------------------------------------------------- LVDM


def lvdm_spec(reference: Mapping[str, Any], unet: Mapping[str, Any], *, model_name: str,
              conditioning: str | None, path: Path) -> LvdmSpec:
    """Our LvdmSpec of a reference LVDM: EF as the 1-d cross-attention token, the frame by channel concat."""
    kind = conditioning or _infer_conditioning(reference, unet)
    if kind != "ef":
        raise WeightsError(
            f"{path}: conditioning {kind!r} cannot be represented: EchoDream feeds "
            + ("the raw class id as a 1-d token, where ours is a learned embedding with its own null class"
               if kind == "class_id" else "CLIP's 77×768 token states unprojected, where ours projects a frozen "
               "encoder's states") + ", so the weights would compute another function",
            fix="import EF-conditioned LVDMs (EchoNet-Synthetic's models/lvdm); retrain class/text ones here")
    for key, want in (("cross_attention_dim", 1), ("addition_time_embed_dim", 1)):
        if unet.get(key, want) != want:
            raise WeightsError(f"{path.parent / UNET_CONFIG}: {key} is {unet[key]!r}; the reference EF LVDM has "
                               f"{want} (EF token / disabled micro-conditioning)", fix=_REFERENCE_FIX)
    globals_ = reference.get("globals") or {}
    fps = globals_.get("target_fps", 32)
    if not isinstance(fps, int | float):
        raise WeightsError(f"{path}: globals.target_fps is {fps!r}; an LVDM needs a number",
                           fix="set the fps the model was trained at")
    return LvdmSpec(model=UNetConfig(name=model_name, added_time_ids=False),
                    # the reference never applied its condition dropout (seed-systems §3.2): no trained null
                    conditioning=ConditioningConfig(types=["ef"], dim=1, p_cond=0.0),
                    objective=objective_from_reference(reference, path),
                    dataset=LatentDatasetConfig(num_frames=unet.get("num_frames") or globals_.get("target_nframes", 64),
                                                target_fps=float(fps)))


def _infer_conditioning(reference: Mapping[str, Any], unet: Mapping[str, Any]) -> str:
    outputs = {str(o) for d in reference.get("datasets") or [] for o in (d.get("params") or {}).get("outputs") or []}
    outputs |= {str(o) for o in (reference.get("globals") or {}).get("outputs") or []}
    if unet.get("cross_attention_dim", 1) != 1 or "text" in outputs:
        return "text"
    if "lvef" in outputs:
        return "ef"
    if "class_id" in outputs:
        return "class_id"
    raise WeightsError("config.yaml names no condition (no 'lvef' or 'class_id' in the datasets' outputs)",
                       fix="pass --conditioning ef|class_id|text")


def import_lvdm(folder: str | os.PathLike, out: str | os.PathLike, *, model_name: str, vae: Mapping[str, Any],
                conditioning: str | None = None) -> dict[str, Any]:
    """Check `folder` (reference layout) and write it to `out` as an LvdmNet folder; → its provenance."""
    folder = Path(folder)
    require_files(folder, [UNET_CONFIG, UNET_WEIGHTS, REFERENCE_CONFIG], "LVDM")
    reference, found = read_reference_config(folder / REFERENCE_CONFIG), read_json(folder / UNET_CONFIG)
    spec = lvdm_spec(reference, found, model_name=model_name, conditioning=conditioning,
                     path=folder / REFERENCE_CONFIG)
    expected_cfg, expected = expected_state(lambda: build_lvdm_net(spec).denoiser.unet)
    shapes = safetensors_shapes(folder / UNET_WEIGHTS)
    if TIME_IDS_WEIGHT in shapes and TIME_IDS_WEIGHT in expected:
        shapes[TIME_IDS_WEIGHT] = (*shapes[TIME_IDS_WEIGHT][:-1], expected[TIME_IDS_WEIGHT][-1])
    raise_mismatches(_class_mismatch(found, _LVDM_CLASS) + config_mismatches(found, expected_cfg, UNET_CONFIG)
                     + tensor_mismatches(shapes, expected, UNET_WEIGHTS), f"LVDM folder {folder}", _REFERENCE_FIX)
    source = provenance(folder, [UNET_WEIGHTS], reference, vae)

    def write(tmp: Path) -> None:
        from diffusers import UNetSpatioTemporalConditionModel

        unet = UNetSpatioTemporalConditionModel.from_config(expected_cfg)
        unet.load_state_dict(_widened(_load(folder), expected[TIME_IDS_WEIGHT][-1]), strict=True)
        denoiser = LatentVideoDenoiser(unet, added_time_ids=False)
        LvdmNet(denoiser, ConditionEncoder(spec.conditioning), spec).save_pretrained(tmp)
        add_source(tmp / LVDM_CONFIG_FILE, source)

    write_folder(out, write)
    return source


def _widened(state: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """Zero-pad the added-time-id projection to `width` inputs (module docstring: its input is all zeros)."""
    weight = state[TIME_IDS_WEIGHT]
    pad = torch.zeros(*weight.shape[:-1], width - weight.shape[-1], dtype=weight.dtype)
    return {**state, TIME_IDS_WEIGHT: torch.cat([weight, pad], dim=-1)}


# ---------------------------------------------------------------- LIDM


def lidm_spec(reference: Mapping[str, Any], unet: Mapping[str, Any], *, model_name: str, path: Path) -> LidmSpec:
    """Our LidmSpec of a reference LIDM: unconditional (EchoNet-Synthetic), v-prediction DDPM."""
    if unet.get("_class_name") == "UNet2DConditionModel" or unet.get("num_class_embeds") \
            or unet.get("class_embed_type"):
        raise WeightsError(f"{path.parent / UNET_CONFIG}: a class-conditioned LIDM ({unet.get('_class_name')}) "
                           "cannot be represented: EchoDream's class enters through a 1-wide mid-block "
                           "cross-attention, ours through a class embedding with a null class",
                           fix="import EchoNet-Synthetic's unconditional models/lidm_<dataset>; retrain "
                               "class-conditioned LIDMs with `echoforge lidm train`")
    return LidmSpec(model=LidmModelConfig(name=model_name), objective=objective_from_reference(reference, path))


def import_lidm(folder: str | os.PathLike, out: str | os.PathLike, *, model_name: str,
                vae: Mapping[str, Any]) -> dict[str, Any]:
    """Check `folder` (reference layout) and write it to `out` as a LidmNet folder; → its provenance.
    `vae`: {sha256, scaling_factor} of the VAE whose latents the LIDM models."""
    folder = Path(folder)
    require_files(folder, [UNET_CONFIG, UNET_WEIGHTS, REFERENCE_CONFIG], "LIDM")
    reference, found = read_reference_config(folder / REFERENCE_CONFIG), read_json(folder / UNET_CONFIG)
    spec = lidm_spec(reference, found, model_name=model_name, path=folder / REFERENCE_CONFIG)
    expected_cfg, expected = expected_state(lambda: build_unet2d(spec))
    raise_mismatches(_class_mismatch(found, _LIDM_CLASS) + config_mismatches(found, expected_cfg, UNET_CONFIG)
                     + tensor_mismatches(safetensors_shapes(folder / UNET_WEIGHTS), expected, UNET_WEIGHTS),
                     f"LIDM folder {folder}", _REFERENCE_FIX)
    source = provenance(folder, [UNET_WEIGHTS], reference, vae)

    def write(tmp: Path) -> None:
        from diffusers import UNet2DModel

        unet = UNet2DModel.from_config(expected_cfg)
        unet.load_state_dict(_load(folder), strict=True)
        LidmNet(unet, spec).save_pretrained(tmp, vae=vae)
        add_source(tmp / LIDM_CONFIG_FILE, source)

    write_folder(out, write)
    return source


# ---------------------------------------------------------------- shared


def _class_mismatch(found: Mapping[str, Any], want: str) -> list[str]:
    got = found.get("_class_name", want)
    return [] if got == want else [f"{UNET_CONFIG} _class_name {got!r}, expected {want!r}"]


def _load(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(str(folder / UNET_WEIGHTS)).items()}
