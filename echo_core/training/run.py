"""One training run's state, built once from a task: accelerator, model, EMA, optimizer, data, generator.

`build_run` + `trainer.optimizer_step` are public so benchmarks can time the real training step. The speed
switches of `optim` (compile, channels_last, attention_backend; adamw_impl in `optim.py`) are applied here,
for every task, and checked before the first step so an unsupported setup fails with the fix, not mid-run.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from echo_core.errors import UsageError
from echo_core.training.data_order import DataOrder, History
from echo_core.training.ema import EMA
from echo_core.training.optim import OptimConfig, build_optimizer, build_scheduler
from echo_core.training.task import LoopConfig, TrainTask


@dataclass
class TrainingRun:
    """Everything one training run holds; built once by `build_run`."""

    task: TrainTask
    accelerator: Any
    net: nn.Module  # prepared (DDP-wrapped when distributed)
    ema: EMA | None  # None when the task's config has `ema: None`
    optimizer: Any
    scheduler: torch.optim.lr_scheduler.LambdaLR | None  # None for `optim.schedule: none`
    data: DataOrder
    generator: torch.Generator | None  # all of the task's training randomness (per rank); None: global RNG
    history: History = field(default_factory=History)
    step: int = 0

    @property
    def cfg(self) -> LoopConfig:
        return self.task.config

    @property
    def module(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.net)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def lr(self) -> float:
        """The LR of the coming optimizer step."""
        return self.scheduler.get_last_lr()[0] if self.scheduler else self.optimizer.param_groups[0]["lr"]

    def attention(self) -> contextlib.AbstractContextManager:
        """The configured SDPA kernel, around a micro-batch's forward and backward."""
        return attention_context(self.cfg.optim.attention_backend)

    def next_batch(self) -> Mapping[str, Any]:
        return self.data.next_batch(self.step)

    @contextlib.contextmanager
    def inference_weights(self) -> Iterator[nn.Module]:
        """The unwrapped model with the EMA weights swapped in (and back bit-exactly), or as trained."""
        swap = self.ema.applied_to(self.module) if self.ema is not None else contextlib.nullcontext(self.module)
        with swap as net:
            yield net

    def export(self, folder: Path, dtype: torch.dtype) -> Path:
        """The task's inference folder of the inference weights."""
        with self.inference_weights() as net:
            return self.task.export(net, folder, dtype, self.step)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _seed_rank(seed: int, rank: int) -> torch.Generator:
    """Seed python/numpy/torch global RNGs per rank and return the rank's training generator."""
    rank_seed = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    random.seed(rank_seed)
    np.random.seed(rank_seed)
    torch.manual_seed(rank_seed)
    return torch.Generator().manual_seed(rank_seed)


def _make_accelerator(cfg: LoopConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True)
    settings = {"cpu": not torch.cuda.is_available(), "mixed_precision": cfg.optim.mixed_precision}
    try:
        return Accelerator(**settings)
    except ValueError as exc:
        # accelerate keeps one process-wide state and refuses a later run with another mixed precision (a
        # notebook training twice, the benchmark's bf16 A/B): start that run from a fresh state, keeping
        # the process group (PartialState). Runs in one process are sequential, so none still uses it.
        if "already been initialized" not in str(exc):
            raise
        AcceleratorState._reset_state(reset_partial_state=False)
        return Accelerator(**settings)


# ---------------------------------------------------------------- speed switches

_SDPA_BACKENDS = {"math": "MATH", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}
_AUTOCAST_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def attention_context(backend: str) -> contextlib.AbstractContextManager:
    """`torch.nn.attention.sdpa_kernel` restricted to `backend`; default: torch's own choice."""
    if backend == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, _SDPA_BACKENDS[backend]))


def check_attention_backend(optim: OptimConfig, device: torch.device) -> None:
    """One small attention forward + backward under the backend, in the autocast dtype: torch has no kernel
    for e.g. efficient attention on CPU or flash attention in fp32, and says so only inside the model."""
    if optim.attention_backend == "default":
        return
    dtype = _AUTOCAST_DTYPES[optim.mixed_precision]
    q = torch.zeros(1, 1, 8, 8, device=device, dtype=dtype, requires_grad=True)
    try:
        with attention_context(optim.attention_backend):
            F.scaled_dot_product_attention(q, q, q).sum().backward()
    except RuntimeError as exc:
        raise UsageError(f"optim.attention_backend {optim.attention_backend} has no kernel on {device.type} "
                         f"for {dtype} (mixed_precision {optim.mixed_precision}): {exc}".split("\n")[0],
                         fix="set optim.attention_backend to default or math (flash needs fp16/bf16 on a "
                             "GPU or a CPU build with it; efficient needs a GPU)") from exc


def apply_channels_last(model: nn.Module) -> int:
    """Store every Conv2d weight channels-last (NHWC); returns how many. A convolution with a channels-last
    weight gives a channels-last output, so the spatial path runs NHWC from the first conv on. The video
    UNet's spatial convolutions run on frames folded into the batch, (B·T, C, H, W), so they are covered;
    its temporal Conv3d (kernel 3×1×1) weights and its 5-d input stay contiguous."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UsageError(f"optim.channels_last is on but {type(model).__name__} has no Conv2d layer",
                         fix="set optim.channels_last to false for this model")
    for conv in convs:
        conv.to(memory_format=torch.channels_last)
    return len(convs)


def unet_blocks(model: nn.Module) -> list[nn.Module]:
    """The down, mid and up blocks of every diffusers UNet inside `model` (the repeated modules)."""
    blocks: list[nn.Module] = []
    for m in model.modules():
        if isinstance(getattr(m, "down_blocks", None), nn.ModuleList) and \
                isinstance(getattr(m, "up_blocks", None), nn.ModuleList):
            mid = getattr(m, "mid_block", None)
            blocks += [*m.down_blocks, *([mid] if mid is not None else []), *m.up_blocks]
    return blocks


def apply_compile(model: nn.Module, mode: str, device: torch.device) -> int:
    """`nn.Module.compile` in place (the module keeps its class and its state_dict keys: no `_orig_mod.`
    prefix in checkpoints or exports) on the whole model or on each UNet block. Returns the modules compiled."""
    if mode == "none":
        return 0
    targets = [model] if mode == "model" else unet_blocks(model)
    if not targets:
        raise UsageError(f"optim.compile regional compiles UNet down/mid/up blocks, and {type(model).__name__} "
                         "has none", fix="set optim.compile to model or none for this task")
    try:  # a tiny graph first: dynamo or the inductor's compiler may be missing on this platform
        torch.compile(lambda x: x * 2.0)(torch.ones(2, device=device))
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds here (BackendCompilerFailed, ...)
        raise UsageError(f"optim.compile {mode}: torch.compile does not work on {device.type} with torch "
                         f"{torch.__version__}: {type(exc).__name__}: {exc}".split("\n")[0],
                         fix="set optim.compile to none (or install a C++ compiler for the CPU inductor)") from exc
    for module in targets:
        module.compile()
    return len(targets)


def apply_speed_switches(model: nn.Module, optim: OptimConfig, device: torch.device) -> None:
    """channels_last, then compile (which traces the final layout), then the attention backend check."""
    if optim.channels_last:
        apply_channels_last(model)
    apply_compile(model, optim.compile, device)
    check_attention_backend(optim, device)


def build_run(task: TrainTask) -> TrainingRun:
    """Accelerator, data, model, EMA, optimizer and schedule of one run of `task`."""
    cfg = task.config
    accelerator = _make_accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    data = task.data_order(task.train_dataset(), rank=rank, world_size=world)
    torch.manual_seed(cfg.seed)  # the run's seed, not the rank's: every rank starts from the same weights
    model = task.build_model().to(accelerator.device)
    apply_speed_switches(model, cfg.optim, accelerator.device)
    ema = EMA(model, cfg.ema) if cfg.ema is not None else None
    optimizer = build_optimizer((p for p in model.parameters() if p.requires_grad), cfg.optim)
    net, optimizer = accelerator.prepare(model, optimizer)
    task.prepare_extras(model, accelerator)
    scheduler = build_scheduler(optimizer, cfg.optim)  # NOT prepared: stepped once per optimizer step
    generator = None if task.uses_global_rng else _seed_rank(cfg.seed, rank)
    return TrainingRun(task, accelerator, net, ema, optimizer, scheduler, data, generator)
