"""Few-step distillation of a rectified-flow LVDM (echo_core.training.distill): the teacher's segment
integration, the config built from the teacher folder, the loss's consistency with the teacher, and a real
short student training run on a tiny store with a tiny diffusers SVD UNet."""

from __future__ import annotations

import json

import pytest
import torch
from support.lvdm_data import tiny_train_section, write_latent_store

from echo_core.config import validate_config
from echo_core.errors import ConfigError, WeightsError
from echo_core.models.lvdm import LvdmNet, read_lvdm_spec
from echo_core.training.distill import DistillTask, distill_config, integrate, segment_times, train_distill
from echo_core.training.lvdm import FINAL_DIR, LvdmTrainConfig, train_lvdm
from echo_core.training.trainer import weights_digest

torch.set_num_threads(2)
LOOP = {"optim": {"lr": 1e-3, "warmup_steps": 1, "batch_size": 2, "max_steps": 3}, "ema": {"decay": 0.9},
        "checkpoint": {"every": 3, "total_limit": 1}, "validation": {"every": None}, "deterministic": True,
        "num_workers": 0, "seed": 5}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """(store, a 3-step rectified-flow teacher folder)."""
    root = tmp_path_factory.mktemp("distill")
    store = write_latent_store(root / "store")
    cfg = validate_config(LvdmTrainConfig, tiny_train_section(optim={**LOOP["optim"], "max_steps": 3}))
    return store, train_lvdm(cfg, [store], root / "teacher").folder


@pytest.mark.parametrize("heun", [False, True])
def test_integrate_follows_a_constant_velocity_exactly_per_clip(heun: bool):
    x = torch.randn(3, 4, 2, 5, 5)
    velocity = torch.randn(3, 4, 2, 5, 5)
    t, t_end = torch.tensor([1.0, 0.5, 0.25]), torch.tensor([0.5, 0.0, 0.0])
    out = integrate(lambda x_, s: velocity, x, t, t_end, substeps=3, heun=heun)
    torch.testing.assert_close(out, x + (t_end - t).view(-1, 1, 1, 1, 1) * velocity)


def test_heun_segment_is_second_order_where_euler_is_not():
    """dx/dt = x from 1 to 0.5: exact x·e^-0.5; Heun's error is far below Euler's at the same substeps."""
    x, t, t_end = torch.ones(1, 1), torch.tensor([1.0]), torch.tensor([0.5])
    exact = torch.exp(torch.tensor(-0.5))
    euler = integrate(lambda x_, s: x_, x, t, t_end, substeps=2, heun=False)
    heun = integrate(lambda x_, s: x_, x, t, t_end, substeps=2, heun=True)
    assert abs(heun - exact).item() < 0.1 * abs(euler - exact).item()


def test_segments_are_on_the_students_euler_grid():
    t, t_next = segment_times(4, 64, torch.Generator().manual_seed(0))
    assert set(t.tolist()) <= {1.0, 0.75, 0.5, 0.25} and torch.allclose(t - t_next, torch.full((64,), 0.25))
    t1, t1_next = segment_times(1, 8, torch.Generator().manual_seed(0))
    assert (t1 == 1).all() and (t1_next == 0).all()  # one step: pure noise to data


def test_config_copies_the_teacher_and_refuses_what_it_cannot_distill(teacher, tmp_path):
    store, folder = teacher
    cfg = distill_config(folder, {**LOOP, "distill": {"student_steps": 2}}, where="test")
    assert read_lvdm_spec(folder).model_dump() == {k: v for k, v in cfg.model_dump().items()
                                                   if k in ("model", "conditioning", "objective", "dataset")}
    assert cfg.distill.teacher == str(folder.absolute()) and cfg.distill.student_steps == 2
    with pytest.raises(ConfigError, match=r"\['model'\] describe the network"):
        distill_config(folder, {**LOOP, "model": {"name": "tiny"}}, where="test")
    ddpm = validate_config(LvdmTrainConfig, tiny_train_section(objective={"kind": "v_ddpm"}))
    from echo_core.models.lvdm import build_lvdm_net

    ddpm_folder = build_lvdm_net(ddpm).save_pretrained(tmp_path / "ddpm")
    with pytest.raises(ConfigError, match="objective 'v_ddpm'") as err:
        distill_config(ddpm_folder, LOOP, where="test")
    assert "rectified_flow" in err.value.fix
    with pytest.raises(WeightsError, match="is not an LVDM folder") as missing:
        distill_config(tmp_path, LOOP, where="test")  # e.g. the run folder instead of its unet_ema/
    assert "unet_ema" in missing.value.fix


def test_student_starts_as_the_teacher_so_a_one_substep_target_gives_zero_loss(teacher):
    """With one teacher Euler step per student step the target IS the teacher's velocity: the loss of the
    untrained student is 0 only if noise, times, conditions and dropout are shared exactly."""
    store, folder = teacher
    one_substep = {"student_steps": 2, "teacher_substeps": 1, "teacher_sampler": "euler"}
    cfg = distill_config(folder, {**LOOP, "distill": one_substep}, where="test")
    task = DistillTask(cfg, [store])
    torch.manual_seed(0)
    student = task.build_model()
    assert weights_digest(student.state_dict()) == weights_digest(LvdmNet.from_pretrained(folder).state_dict())
    data = task.train_dataset()
    batch = torch.utils.data.default_collate([data[0], data[1]])
    loss = task.loss(student.eval(), batch, torch.Generator().manual_seed(1))
    assert loss.item() < 1e-10
    heun = distill_config(folder, {**LOOP, "distill": {"student_steps": 2, "teacher_substeps": 2}}, where="t")
    assert DistillTask(heun, [store]).loss(student, batch, torch.Generator().manual_seed(1)).item() > 1e-6


@pytest.mark.slow
def test_distill_trains_and_exports_an_ordinary_lvdm_folder(teacher, tmp_path):
    store, folder = teacher
    cfg = distill_config(folder, {**LOOP, "distill": {"student_steps": 1, "teacher_substeps": 2}}, where="test")
    result = train_distill(cfg, [store], tmp_path / "student")
    assert result.step == 3 and result.folder == tmp_path / "student" / FINAL_DIR
    meta = json.loads((result.folder / "lvdm_config.json").read_text())
    assert meta["train"]["distill"]["teacher"] == str(folder.absolute())
    assert read_lvdm_spec(result.folder) == read_lvdm_spec(folder)  # samplers and serving see a plain LVDM
    student = LvdmNet.from_pretrained(result.folder)
    assert weights_digest(student.state_dict()) != weights_digest(LvdmNet.from_pretrained(folder).state_dict())


@pytest.mark.slow
def test_cli_distills_from_params_and_refuses_a_missing_section(teacher, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from pipelines.cli import app

    store, folder = teacher
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train_distill": {**LOOP, "distill": {"student_steps": 2}}}))
    args = ["train", "distill", "--teacher", str(folder), "--data", str(store), "--params", str(params),
            "--no-tracking", "--max-steps", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "2-step student" in result.output and "--sampler euler --steps 2" in result.output
    assert (tmp_path / "s" / FINAL_DIR / "lvdm_config.json").is_file()
    params.write_text("train_lvdm: {}\n")
    missing = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "t")])
    assert missing.exit_code != 0 and "has no 'train_distill' section" in str(missing.exception)
    assert not (tmp_path / "t").exists()


@pytest.mark.slow
def test_cli_tracks_the_student_and_registers_it_under_its_own_alias(teacher, tmp_path, monkeypatch):
    import yaml
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from pipelines.cli import app

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    store, folder = teacher
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train_distill": LOOP}))
    result = CliRunner().invoke(app, ["train", "distill", "--teacher", str(folder), "--data", str(store),
                                      "--params", str(params), "--out", str(tmp_path / "s"), "--register"])
    assert result.exit_code == 0, result.output
    run_id = next(line.split("=", 1)[1] for line in result.output.splitlines() if line.startswith("MLFLOW_RUN_ID="))
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["distilled_from"] == str(folder)
    assert run.data.tags["student_steps"] == "1" and run.data.tags["objective"] == "rectified_flow"
    assert run.data.params["train_distill.distill.teacher_substeps"] == "4"
    version = client.get_model_version_by_alias("echo-lvdm", "distilled")
    assert version.run_id == run_id
    assert client.get_registered_model("echo-lvdm").aliases.get("candidate") is None  # the demo's alias untouched


def test_the_repos_train_distill_section_is_valid(teacher, repo_root):
    from echo_core.config import load_params

    section = load_params(repo_root / "params.yaml")["train_distill"]
    cfg = distill_config(teacher[1], section, where="params.yaml:train_distill")
    assert cfg.distill.student_steps == 1 and cfg.distill.teacher_sampler == "heun"
