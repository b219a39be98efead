"""`echoforge lvdm|lidm|privacy import`: tiny stand-ins of the reference systems' released folders are checked,
converted into our folder formats (same outputs as the released weights run the reference way), registered
with their provenance; every mismatch is named and a failed import leaves nothing behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from support.privacy_data import VAE_SHA, write_reid_store
from support.reference_folders import (
    FRAMES,
    reference_lidm_unet,
    reference_lvdm_unet,
    reference_reid_state,
    write_reference_lidm,
    write_reference_lvdm,
    write_reference_reid,
)
from support.threads import one_torch_thread
from typer.testing import CliRunner

from echo_core.errors import WeightsError
from echo_core.models.import_diffusion import import_lidm, import_lvdm
from echo_core.models.import_reid import convert_reference, import_reid, reference_key_map
from echo_core.models.lidm import LIDM_CONFIG_FILE, LidmNet
from echo_core.models.lvdm import LVDM_CONFIG_FILE, LvdmNet, read_lvdm_spec
from echo_core.models.reid import REID_CONFIG_FILE, ReidNet
from echo_core.models.vae import load_vae
from echo_core.privacy.calibrate import PRIVACY_FILE, PrivacyConfig
from echo_core.utils.hashing import sha256_file
from pipelines.cli import app

WEIGHTS = "diffusion_pytorch_model.safetensors"
VAE = {"sha256": "ab" * 32, "scaling_factor": 0.5}


@pytest.fixture(scope="module")
def project(tmp_path_factory, vae_folder):
    """A working folder (the session's MLflow store: a new sqlite store costs ~8 s of migrations); the VAE's
    sha256; one thread (2 shared cores)."""
    with one_torch_thread():
        root = tmp_path_factory.mktemp("imports")
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(root)
            yield {"root": root, "vae": vae_folder, "vae_sha": load_vae(vae_folder)[1].weights_sha256}


@pytest.fixture(scope="module")
def reid_state():
    return reference_reid_state()


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def _version(name: str, alias: str):
    from pipelines.registry import get_model_version

    return get_model_version(name, alias)


def _reference_artifacts(run_id: str) -> set[str]:
    from pipelines.registry import _client

    return {a.path for a in _client().list_artifacts(run_id, "reference")}


def _assert_nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp folder


# ---------------------------------------------------------------- round trips + registration


def _reference_lvdm_forward(unet, x, frame, t, ef):
    """The reference's own plumbing (seed-systems §3.2): frame repeated and concatenated as channels,
    replicate-padded 14 → 16, b c t h w → b t c h w, EF as a B×1×1 token, one zero added time id."""
    video = torch.cat([x, frame[:, :, None].repeat(1, 1, x.shape[2], 1, 1)], dim=1)
    b, c, frames, h, w = video.shape
    padded = F.pad(video.permute(0, 2, 1, 3, 4).reshape(b * frames, c, h, w), (1, 1, 1, 1), mode="replicate")
    out = unet(padded.reshape(b, frames, c, h + 2, w + 2), t, encoder_hidden_states=ef[:, None, None],
               added_time_ids=torch.zeros(b, 1)).sample
    return out[..., 1:-1, 1:-1].permute(0, 2, 1, 3, 4)


def test_lvdm_import_computes_the_released_function_and_registers_its_provenance(project):
    src = write_reference_lvdm(project["root"] / "models" / "lvdm")
    result = _invoke("lvdm", "import", str(src), "--out", "imported/lvdm", "--vae", str(project["vae"]),
                     "--config", "tiny", "--alias", "imported")
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = project["root"] / "imported" / "lvdm"
    net, reference = LvdmNet.from_pretrained(out), reference_lvdm_unet().eval()
    x, frame, t, ef = torch.randn(2, 4, FRAMES, 14, 14), torch.randn(2, 4, 14, 14), torch.tensor([3, 700]), \
        torch.tensor([0.35, 0.7])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t, frame, {"ef": ef}, None, 32.0),
                                   _reference_lvdm_forward(reference, x, frame, t, ef), rtol=0, atol=1e-6)
    spec = read_lvdm_spec(out)
    assert (spec.objective.noise_offset, spec.dataset.num_frames, spec.dataset.target_fps) == (0.1, FRAMES, 32.0)
    assert spec.conditioning.p_cond == 0.0  # the reference never applied its condition dropout
    source = json.loads((out / LVDM_CONFIG_FILE).read_text())["source"]
    assert source["weights_sha256"] == {WEIGHTS: sha256_file(src / WEIGHTS)}
    assert source["vae"]["sha256"] == project["vae_sha"] and source["source_path"] == str(src.resolve())
    mv = _version("echo-lvdm", "imported")
    assert mv.tags["source"] == "imported" and mv.tags["source_path"] == str(src.resolve())
    assert mv.tags[f"weights_sha256/{WEIGHTS}"] == sha256_file(src / WEIGHTS)
    assert mv.tags["vae_sha256"] == project["vae_sha"] and mv.tags["serving"] == "pyfunc"
    assert _reference_artifacts(mv.run_id) == {"reference/config.yaml"}


def test_lidm_import_computes_the_released_function_and_registers_per_dataset(project):
    src = write_reference_lidm(project["root"] / "models" / "lidm_dynamic")
    result = _invoke("lidm", "import", str(src), "--out", "imported/lidm_dynamic", "--vae", str(project["vae"]),
                     "--config", "tiny")
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = project["root"] / "imported" / "lidm_dynamic"
    net, reference = LidmNet.from_pretrained(out), reference_lidm_unet().eval()
    x, t = torch.randn(3, 4, 14, 14), torch.tensor([0, 250, 999])
    with torch.no_grad():
        expected = reference(F.pad(x, (1, 1, 1, 1), mode="replicate"), t).sample[..., 1:-1, 1:-1]
        torch.testing.assert_close(net(x, t), expected, rtol=0, atol=1e-6)
    meta = json.loads((out / LIDM_CONFIG_FILE).read_text())
    assert meta["vae"]["sha256"] == project["vae_sha"] and meta["source"]["source"] == "imported"
    mv = _version("echo-lidm", "dynamic")
    assert (mv.tags["dataset"], mv.tags["source"], mv.tags["conditioning"]) == ("dynamic", "imported", "none")
    assert mv.tags[f"weights_sha256/{WEIGHTS}"] == sha256_file(src / WEIGHTS)
    assert _reference_artifacts(mv.run_id) == {"reference/config.yaml"}


def test_reid_import_maps_the_weights_calibrates_tau_and_registers(project, reid_state):
    net, state = reid_state
    src = write_reference_reid(project["root"] / "models" / "reidentification_dynamic", state)
    store = write_reid_store(project["root"] / "latents" / "dynamic", vae_sha=project["vae_sha"])
    (project["root"] / "params.yaml").write_text(yaml.safe_dump({"privacy": {"frames_per_video": 2}}))
    result = _invoke("privacy", "import", str(src), "--data", str(store), "--out", "imported/reid_dynamic",
                     "--vae", str(project["vae"]))
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = project["root"] / "imported" / "reid_dynamic"
    x = torch.randn(6, 4, 14, 14)
    with torch.no_grad():
        torch.testing.assert_close(ReidNet.from_pretrained(out).embed(x), net.embed(x), rtol=0, atol=0)
    record = json.loads((out / PRIVACY_FILE).read_text())
    assert record["counts"]["heldout_frames"] == 2 * 12 and record["vae_sha256"] == project["vae_sha"]
    meta = json.loads((out / REID_CONFIG_FILE).read_text())
    assert meta["variant"] == "resnet50-bn" and meta["vae_sha256"] == project["vae_sha"]
    pth = src / "reidentification_dynamic_best_network.pth"
    assert meta["source"]["weights_sha256"] == {pth.name: sha256_file(pth)}
    mv = _version("echo-reid-dynamic", "current")
    assert mv.tags["tau"] == f"{record['tau']:.6f}" and mv.tags["source"] == "imported"
    assert mv.tags[f"weights_sha256/{pth.name}"] == sha256_file(pth)
    assert _reference_artifacts(mv.run_id) == {"reference/config.json"}


def test_the_key_map_uses_torchvision_resnet50_names_and_covers_our_net():
    key_map = reference_key_map()
    ours = ReidNet("resnet50-bn").state_dict()
    assert sorted(key_map.values()) == sorted(ours) and len(key_map) == 322  # torchvision's 320 + fc_end
    torchvision_shapes = {  # torchvision.models.resnet50 with conv1 → 4 channels and fc → 128 (seed §5.1)
        "model.conv1.weight": (64, 4, 7, 7), "model.bn1.running_var": (64,),
        "model.layer1.0.downsample.0.weight": (256, 64, 1, 1), "model.layer2.0.conv2.weight": (128, 128, 3, 3),
        "model.layer3.5.bn3.running_mean": (1024,), "model.layer4.2.conv3.weight": (2048, 512, 1, 1),
        "model.fc.weight": (128, 2048), "fc_end.weight": (1, 128)}
    assert {k: tuple(ours[key_map[k]].shape) for k in torchvision_shapes} == torchvision_shapes
    assert sum(".downsample." in k for k in key_map) == 4 * 6  # layer<i>.0 only: conv + 5 BatchNorm entries


# ---------------------------------------------------------------- mismatches, by name; nothing left behind


def test_a_missing_file_is_named(tmp_path):
    src = write_reference_lidm(tmp_path / "lidm_dynamic")
    (src / "config.yaml").unlink()
    with pytest.raises(WeightsError, match="lacks config.yaml"):
        import_lidm(src, tmp_path / "out", model_name="tiny", vae=VAE)
    _assert_nothing_left(tmp_path / "out")


def test_wrong_in_channels_names_the_key_and_the_tensors(tmp_path):
    src = write_reference_lvdm(tmp_path / "lvdm", in_channels=4)
    with pytest.raises(WeightsError) as err:
        import_lvdm(src, tmp_path / "out", model_name="tiny", vae=VAE)
    assert "config.json in_channels 4, expected 8" in str(err.value)
    assert "tensor conv_in.weight has shape [32, 4, 3, 3], expected [32, 8, 3, 3]" in str(err.value)
    _assert_nothing_left(tmp_path / "out")


def test_tensor_shape_and_missing_tensors_are_listed_then_counted(tmp_path):
    src = write_reference_lidm(tmp_path / "lidm_dynamic")
    state = load_file(str(src / WEIGHTS))
    state["conv_out.weight"] = torch.zeros(4, 32, 1, 1)
    dropped = sorted(k for k in state if k.startswith("up_blocks."))
    save_file({k: v for k, v in state.items() if k not in dropped}, str(src / WEIGHTS))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("an earlier import")
    with pytest.raises(WeightsError) as err:
        import_lidm(src, tmp_path / "out", model_name="tiny", vae=VAE)
    message = str(err.value)
    assert "tensor conv_out.weight has shape [4, 32, 1, 1], expected [4, 32, 3, 3]" in message
    assert f"lacks tensor {dropped[0]}" in message and f"and {len(dropped) + 1 - 5} more" in message
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep.txt"]  # the old folder is untouched


def test_a_scheduler_we_cannot_represent_is_refused_by_key(tmp_path):
    src = write_reference_lvdm(tmp_path / "lvdm", yaml_changes={"noise_scheduler.prediction_type": "epsilon"})
    with pytest.raises(WeightsError, match=r"noise_scheduler\.prediction_type is 'epsilon'.*'v_prediction'"):
        import_lvdm(src, tmp_path / "out", model_name="tiny", vae=VAE)
    _assert_nothing_left(tmp_path / "out")


def test_class_conditioned_models_are_refused_with_the_reason(tmp_path):
    lvdm = write_reference_lvdm(tmp_path / "lvdm", yaml_changes={"globals.outputs": ["video", "class_id", "image"]})
    with pytest.raises(WeightsError, match="conditioning 'class_id' cannot be represented"):
        import_lvdm(lvdm, tmp_path / "out", model_name="tiny", vae=VAE)
    lidm = write_reference_lidm(tmp_path / "lidm_cardiacnet", num_class_embeds=4)
    with pytest.raises(WeightsError, match="class-conditioned LIDM"):
        import_lidm(lidm, tmp_path / "out", model_name="tiny", vae=VAE)
    _assert_nothing_left(tmp_path / "out")


def test_reid_config_and_tensor_mismatches_are_named(tmp_path, reid_state):
    _, state = reid_state
    with pytest.raises(WeightsError, match="config.json n_channels 3, expected 4"):
        convert_reference(write_reference_reid(tmp_path / "reidentification_a", state, n_channels=3))
    bad = {**state, "model.fc.weight": torch.zeros(64, 2048)}
    bad.pop("fc_end.bias")
    with pytest.raises(WeightsError) as err:
        convert_reference(write_reference_reid(tmp_path / "reidentification_b", bad))
    assert "tensor model.fc.weight has shape [64, 2048], expected [128, 2048]" in str(err.value)
    assert "lacks tensor fc_end.bias [1]" in str(err.value)


def test_a_pickled_object_is_refused_without_unpickling(tmp_path):
    folder = write_reference_reid(tmp_path / "reidentification_x", {"fc_end.weight": torch.zeros(1, 128)})
    torch.save({"net": torch.nn.Linear(2, 2)}, folder / "reidentification_x_best_network.pth")
    with pytest.raises(WeightsError, match="not a plain torch state dict"):
        convert_reference(folder)


def test_a_reid_import_for_another_vae_is_refused_naming_both(tmp_path, reid_state, project):
    src = write_reference_reid(tmp_path / "reidentification_dynamic", reid_state[1])
    store = write_reid_store(tmp_path / "store")  # encoded by VAE_SHA, not by the --vae given
    with pytest.raises(WeightsError, match=f"{VAE_SHA}.*{project['vae_sha']}"):
        import_reid(src, tmp_path / "out", roots=[store], vae={"sha256": project["vae_sha"]},
                    privacy=PrivacyConfig(frames_per_video=1))
    _assert_nothing_left(tmp_path / "out")


def test_the_cli_reports_a_mismatch_as_a_weights_error(project, tmp_path):
    src = write_reference_lidm(tmp_path / "lidm_dynamic", block_out_channels=(32, 96))
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    result = _invoke("lidm", "import", str(src), "--out", str(tmp_path / "out"), "--vae", str(project["vae"]),
                     "--config", "tiny")
    assert result.exit_code != 0 and isinstance(result.exception, WeightsError)
    assert "block_out_channels [32, 96], expected [32, 64]" in str(result.exception)
    _assert_nothing_left(tmp_path / "out")
