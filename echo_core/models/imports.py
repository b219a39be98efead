"""Bring the reference systems' released diffusion models into EchoForge's own folder formats.

EchoNet-Synthetic / EchoDream release `models/lvdm` (a diffusers `UNetSpatioTemporalConditionModel` copied from
`checkpoint-N/unet_ema`) and `models/lidm_<dataset>` (a `UNet2DModel`), each beside the training `config.yaml`
(seed-systems §1, §3). `import_lvdm` / `import_lidm` check such a folder against our architecture (config keys,
then every tensor's name and shape), map its noise scheduler onto our objective config, refuse what we cannot
represent (naming the key), and write an `LvdmNet` / `LidmNet` folder atomically, so sampling, serving and
filtering read it unchanged. The re-identification net is in `echo_core.models.import_reid`.

Provenance (`"source"` in lvdm_config.json / lidm_config.json): source=imported, the source folder, the sha256
of each weight file, the VAE the latents come from, and the reference config itself.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from echo_core.diffusion.objectives import DDPMObjectiveConfig
from echo_core.errors import WeightsError
from echo_core.utils.atomic import atomic_dir, write_json_atomic
from echo_core.utils.hashing import sha256_file

REFERENCE_CONFIG = "config.yaml"
UNET_CONFIG = "config.json"
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
SHOWN = 5  # mismatches listed by name; the rest are counted
# config.json keys that carry no architecture (or that the conversion sets itself)
_UNCHECKED = {"sample_size", "num_frames", "projection_class_embeddings_input_dim"}
# the reference DDPMScheduler settings our v-prediction DDPM reproduces exactly (key → required value)
_FIXED_SCHEDULER = {"_class_name": "DDPMScheduler", "beta_schedule": "linear", "prediction_type": "v_prediction",
                    "variance_type": "fixed_small", "clip_sample": True, "thresholding": False, "steps_offset": 0}
_INTERPOLATION = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


# ---------------------------------------------------------------- reading and checking a reference folder


def require_files(folder: Path, names: Iterable[str], what: str) -> None:
    """A WeightsError listing every missing file of a reference folder."""
    if not folder.is_dir():
        raise WeightsError(f"{what} folder not found: {folder}", fix="pass the released models/<name> folder")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise WeightsError(f"{what} folder {folder} lacks {', '.join(missing)}",
                           fix="copy the complete released folder (weights and config files)")


def read_reference_config(path: Path) -> dict[str, Any]:
    """The training config.yaml with its OmegaConf `${a.b}` interpolations resolved (the reference saves it
    unresolved)."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise WeightsError(f"cannot read {path}: {str(exc)[:200]}",
                           fix="pass the config.yaml saved by training") from None
    if not isinstance(doc, dict):
        raise WeightsError(f"{path} is not a mapping", fix="pass the config.yaml saved by training")
    return _resolve(doc, doc, path)


def _resolve(node: Any, root: Mapping[str, Any], path: Path) -> Any:
    if isinstance(node, dict):
        return {k: _resolve(v, root, path) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, root, path) for v in node]
    if not isinstance(node, str) or "${" not in node:
        return node
    whole = _INTERPOLATION.fullmatch(node)
    if whole:  # "${globals.target_fps}" keeps the referenced value's type
        return _resolve(_lookup(root, whole.group(1), path), root, path)
    return _INTERPOLATION.sub(lambda m: str(_lookup(root, m.group(1), path)), node)


def _lookup(root: Mapping[str, Any], dotted: str, path: Path) -> Any:
    node: Any = root
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise WeightsError(f"{path}: interpolation ${{{dotted}}} names no key",
                               fix="restore the config.yaml saved by training")
        node = node[part]
    return node


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path} is not valid JSON: {str(exc)[:200]}", fix="restore the released file") from None


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of a safetensors file, read from its header (no weights loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as exc:  # a truncated or foreign file: name it
        raise WeightsError(f"cannot read {path}: {str(exc)[:200]}", fix="restore the released weights file") from None


def config_mismatches(found: Mapping[str, Any], expected: Mapping[str, Any], file: str,
                      ignore: Iterable[str] = ()) -> list[str]:
    """'<file> <key> X, expected Y' for every architecture key of `expected` that `found` sets differently."""
    skip = set(ignore) | _UNCHECKED
    out = []
    for key, want in expected.items():
        if key.startswith("_") or key in skip or key not in found:
            continue
        if _plain(found[key]) != _plain(want):
            out.append(f"{file} {key} {_plain(found[key])!r}, expected {_plain(want)!r}")
    return out


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples → lists, so a config.json value compares with a built one


def tensor_mismatches(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]],
                      file: str) -> list[str]:
    """Missing tensors, unexpected tensors and shape mismatches, each by name."""
    missing = [f"{file} lacks tensor {k} {list(s)}" for k, s in expected.items() if k not in found]
    extra = [f"{file} has unexpected tensor {k} {list(s)}" for k, s in found.items() if k not in expected]
    shapes = [f"{file} tensor {k} has shape {list(found[k])}, expected {list(s)}"
              for k, s in expected.items() if k in found and tuple(found[k]) != tuple(s)]
    return shapes + missing + extra


def raise_mismatches(problems: list[str], where: str, fix: str) -> None:
    """One WeightsError with the first SHOWN problems by name and the count of the rest."""
    if not problems:
        return
    shown = "; ".join(problems[:SHOWN])
    more = f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    raise WeightsError(f"{where} does not match the expected architecture ({len(problems)} problem(s)): "
                       f"{shown}{more}", fix=fix)


def objective_from_reference(cfg: Mapping[str, Any], path: Path) -> DDPMObjectiveConfig:
    """config.yaml `noise_scheduler` + `noise_offset` → our v-prediction DDPM config; anything it cannot
    reproduce exactly is refused by key."""
    sched = cfg.get("noise_scheduler")
    if not isinstance(sched, dict):
        raise WeightsError(f"{path} has no noise_scheduler section", fix="pass the config.yaml saved by training")
    for key, want in _FIXED_SCHEDULER.items():
        if key in sched and sched[key] != want:
            raise WeightsError(f"{path}: noise_scheduler.{key} is {sched[key]!r}; EchoForge's v-prediction DDPM "
                               f"needs {want!r}", fix="only v-prediction DDPM models with linear betas are importable")
    try:
        return DDPMObjectiveConfig(
            num_train_timesteps=sched.get("num_train_timesteps", 1000), beta_start=sched.get("beta_start", 1e-4),
            beta_end=sched.get("beta_end", 0.02), clip_sample_range=sched.get("clip_sample_range", 4.0),
            timestep_spacing=sched.get("timestep_spacing", "leading"), noise_offset=cfg.get("noise_offset", 0.0))
    except ValueError as exc:
        raise WeightsError(f"{path}: noise_scheduler cannot be represented: {str(exc)[:300]}",
                           fix="only v-prediction DDPM models with linear betas are importable") from None


def expected_state(build) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """(config, tensor name → shape) of the module `build()` returns, built on the meta device (no memory)."""
    with torch.device("meta"):
        module = build()
    config = dict(getattr(module, "config", {}))
    return config, {k: tuple(v.shape) for k, v in module.state_dict().items()}


def provenance(folder: Path, weight_files: Iterable[str], reference: Mapping[str, Any],
               vae: Mapping[str, Any]) -> dict[str, Any]:
    """What an imported folder records about where it came from."""
    return {"source": "imported", "source_path": str(folder.resolve()),
            "weights_sha256": {name: sha256_file(folder / name) for name in weight_files},
            "vae": dict(vae), "reference_config": dict(reference)}


def add_source(meta_file: Path, source: Mapping[str, Any]) -> None:
    """Record the provenance in a model folder's own metadata file."""
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    write_json_atomic(meta_file, {**meta, "source": dict(source)})


def write_folder(out: str | os.PathLike, write) -> Path:
    """Run `write(tmp)` in a temp sibling of `out` and swap it into place only when it returns: a failed
    conversion leaves nothing (and an older `out` untouched)."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        write(tmp)
    return out
