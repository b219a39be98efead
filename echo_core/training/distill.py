"""Few-step distillation of a rectified-flow LVDM, as one more task of the one trainer (`echoforge train distill`).

The student starts as a copy of the teacher and learns to cover, in ONE Euler step, a segment of the
sampling grid that the frozen teacher covers in `teacher_substeps` steps (progressive distillation, Salimans
& Ho 2022, in rectified-flow form). With `student_steps` S, the student samples with `euler` at S steps:

    grid t_0 = 1 > t_1 > ... > t_S = 0                     (`flow_timesteps(S)`, what `euler` walks)
    x_t  = (1 − t_i)·x0 + t_i·noise                       (x0: a training clip; at t_0 = 1 pure noise)
    x*   = teacher's `teacher_sampler` from t_i to t_{i+1} in `teacher_substeps` steps     (no grad)
    loss = masked MSE(v_student(x_t, t_i), (x* − x_t) / (t_{i+1} − t_i))

so the student's Euler step x_t + (t_{i+1} − t_i)·v lands where the teacher's sub-steps land. Conditions,
condition dropout and frame dropout are drawn once per clip and shared by teacher and student, so the
student keeps the teacher's conditional and null branches. The exported folder is an ordinary LVDM folder
(same spec and objective as the teacher): every sampler, evaluation and serving path uses it unchanged.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from echo_core.config import StrictModel, validate_config
from echo_core.diffusion.objectives import euler_step, flow_timesteps, frame_mask, to_frame_residual
from echo_core.errors import ConfigError, WeightsError
from echo_core.models.conditioning import apply_frame_dropout, sample_dropout_masks
from echo_core.models.lvdm import LVDM_CONFIG_FILE, LvdmNet, read_lvdm_spec
from echo_core.tracking import Tracker
from echo_core.training.lvdm import LvdmTask, LvdmTrainConfig
from echo_core.training.task import TrainResult
from echo_core.training.trainer import train

Predict = Any  # (x_t, t (B,) in [0, 1]) -> velocity


class DistillSpec(StrictModel):
    teacher: str = Field("", description="the teacher's LVDM folder (set from --teacher; part of the trajectory)")
    student_steps: int = Field(1, ge=1, le=8, description="Euler steps the student samples with")
    teacher_substeps: int = Field(4, ge=1, description="teacher steps per student step")
    teacher_sampler: Literal["euler", "heun"] = "heun"


class DistillTrainConfig(LvdmTrainConfig):
    """The teacher's spec (model, conditioning, objective, dataset) + `train_distill:` (loop and `distill`)."""

    distill: DistillSpec = Field(default_factory=DistillSpec)


def distill_config(teacher: str | os.PathLike, section: Mapping[str, Any], where: str) -> DistillTrainConfig:
    """The student's config: the teacher folder's spec, then the `train_distill:` section (loop settings and
    `distill`); the section may not change what the network is."""
    if not (Path(teacher) / LVDM_CONFIG_FILE).is_file():
        raise WeightsError(f"teacher {teacher} is not an LVDM folder: {LVDM_CONFIG_FILE} is missing",
                           fix="pass the unet_ema/ folder of a rectified-flow `echoforge train lvdm` run "
                               "(or models:/echo-lvdm@<alias>)")
    spec = read_lvdm_spec(teacher)
    if spec.objective.kind != "rectified_flow":
        raise ConfigError(f"{teacher} was trained with objective {spec.objective.kind!r}; distillation "
                          "integrates a rectified flow",
                          fix="distill a model trained with `objective: {kind: rectified_flow}`")
    fixed = set(type(spec).model_fields) & set(section)
    if fixed:
        raise ConfigError(f"{where}: {sorted(fixed)} describe the network, which the student copies from the "
                          "teacher", fix=f"remove {sorted(fixed)} from the section")
    distill = {**section.get("distill", {}), "teacher": str(Path(teacher).absolute())}
    return validate_config(DistillTrainConfig, {**spec.model_dump(mode="json"), **section, "distill": distill},
                           where=where)


def segment_times(student_steps: int, b: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(t_i, t_{i+1}), each (b,): one segment of the student's grid per clip, drawn uniformly."""
    grid = flow_timesteps(student_steps)
    i = torch.randint(0, student_steps, (b,), generator=generator)
    return grid[i], grid[i + 1]


def integrate(predict: Predict, x: torch.Tensor, t: torch.Tensor, t_end: torch.Tensor, substeps: int,
              heun: bool) -> torch.Tensor:
    """Euler or Heun from per-clip times t to t_end (both (B,)) in `substeps` equal steps; like the
    samplers, a Heun step that ends at t = 0 is an Euler step."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    for k in range(substeps):
        s = t + (t_end - t) * (k / substeps)
        s_next = t + (t_end - t) * ((k + 1) / substeps)
        v = predict(x, s)
        x_next = euler_step(x, v, s.view(shape), s_next.view(shape))
        if heun and bool((s_next > 0).any()):  # no teacher call at t = 0: its Heun correction is unused
            v_next = predict(x_next, s_next)
            heun_next = euler_step(x, 0.5 * (v + v_next), s.view(shape), s_next.view(shape))
            x_next = torch.where((s_next > 0).view(shape), heun_next, x_next)
        x = x_next
    return x


class DistillTask(LvdmTask):
    """The student LVDM; `loss` runs the frozen teacher for the target."""

    name = "distill"
    config: DistillTrainConfig

    def __init__(self, cfg: DistillTrainConfig, data_roots: Sequence[str | os.PathLike], **kwargs: Any):
        if not cfg.distill.teacher:
            raise ConfigError("train_distill.distill.teacher is not set", fix="build the config with distill_config")
        super().__init__(cfg, data_roots, **kwargs)
        self.teacher_folder = Path(cfg.distill.teacher)

    def build_model(self) -> LvdmNet:
        """The teacher's weights under the student's config (its `train` dump records the distillation)."""
        net = LvdmNet.from_pretrained(self.teacher_folder, self.text_encoder).train()
        net.spec = self.config
        if self.config.optim.gradient_checkpointing:
            net.denoiser.unet.enable_gradient_checkpointing()
        return net

    @functools.cached_property
    def teacher(self) -> LvdmNet:
        net = LvdmNet.from_pretrained(self.teacher_folder, self.text_encoder)
        return net.requires_grad_(False)

    def loss(self, model: nn.Module, batch: Mapping[str, Any], generator: torch.Generator) -> torch.Tensor:
        p, d = self.config.conditioning, self.config.distill
        x0 = batch["video"]
        if p.frame_residual is not None:
            x0 = to_frame_residual(x0, batch["cond_frame"], p.frame_residual)
        b, frames = x0.shape[0], x0.shape[2]
        cond_drop, frame_drop = sample_dropout_masks(b, p.p_cond, p.p_frame, generator)
        cond_drop = cond_drop.to(x0.device)
        noise = self.objective.make_noise(x0, generator)
        t, t_next = (s.to(x0.device) for s in segment_times(d.student_steps, b, generator))
        x_t, _ = self.objective.training_target(x0, noise, t)
        cond_frame = apply_frame_dropout(batch["cond_frame"], frame_drop)
        teacher = self.teacher.to(x0.device)

        def teacher_velocity(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return teacher(x, self.objective.model_time(s), cond_frame, batch, cond_drop, batch["fps"])

        with torch.no_grad():
            x_target = integrate(teacher_velocity, x_t, t, t_next, d.teacher_substeps, d.teacher_sampler == "heun")
        shape = (-1,) + (1,) * (x0.dim() - 1)
        v_target = (x_target - x_t) / (t_next - t).view(shape)
        pred = model(x_t, self.objective.model_time(t), cond_frame, batch, cond_drop, batch["fps"])
        return self.objective.loss(pred, v_target, frame_mask(batch["padding"], frames))

    def params(self) -> dict[str, Any]:
        return {"train_distill": self.config.model_dump(mode="json"), "data": [str(d) for d in self.data_roots]}


def train_distill(cfg: DistillTrainConfig, data_roots: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                  tracker: Tracker | None = None, resume: str | None = None, vae: Any = None) -> TrainResult:
    """Distill the rectified-flow LVDM `cfg.distill.teacher` (from `distill_config`) into a
    `cfg.distill.student_steps`-step student on the TRAIN clips of `data_roots`; writes what `train_lvdm`
    writes (the student's EMA folder: unet_ema/)."""
    return train(DistillTask(cfg, data_roots, vae=vae), out_dir, tracker=tracker, resume=resume)
