"""Long videos from a fixed-length model: overlapping windows, denoised jointly.

The T frames are covered by overlapping windows of the model's clip length; every window is denoised at
every step, and their predictions are merged into ONE prediction for the whole sequence before the sampler
takes its step (joint denoising, as the reference; seed-systems §4.2). The reference hard-coded a 64/32
split and rounded T up to a multiple of 32; here window and stride are free, the last window is shifted
back to end exactly at T, and `blend=True` averages overlaps instead of keeping only the frames a window adds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from echo_core.diffusion.guidance import Guidance, repeat_batch
from echo_core.errors import UsageError

VideoDenoiser = Callable[..., torch.Tensor]  # (x, t, cond_frame, encoder_hidden_states, fps) -> prediction


def window_starts(num_frames: int, window: int, stride: int) -> list[int]:
    """First frame of each window covering [0, num_frames); the last window ends exactly at num_frames.

    A video no longer than the window is one window of `num_frames` frames.
    """
    if num_frames < 1 or window < 1 or not 1 <= stride <= window:
        raise UsageError(f"invalid windows: num_frames={num_frames}, window={window}, stride={stride}",
                         fix="use num_frames >= 1, window >= 1 and 1 <= stride <= window")
    if num_frames <= window:
        return [0]
    starts = list(range(0, num_frames - window + 1, stride))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return starts


def merge_windows(preds: Sequence[torch.Tensor], starts: Sequence[int], num_frames: int,
                  blend: bool) -> torch.Tensor:
    """Per-window predictions (B, C, w, h, w') → one (B, C, T, h, w') prediction.

    blend=False (reference): each frame comes from the first window that covers it, so a later window
    contributes only the frames it adds. blend=True: overlapping predictions are averaged.
    """
    b, c, _, h, w = preds[0].shape
    out = preds[0].new_zeros(b, c, num_frames, h, w)
    if blend:
        count = preds[0].new_zeros(1, 1, num_frames, 1, 1)
        for start, pred in zip(starts, preds, strict=True):
            out[:, :, start:start + pred.shape[2]] += pred
            count[:, :, start:start + pred.shape[2]] += 1
        return out / count
    covered = 0
    for start, pred in zip(starts, preds, strict=True):
        end = start + pred.shape[2]
        if end > covered:
            out[:, :, covered:end] = pred[:, :, covered - start:]
            covered = end
    return out


def guided_prediction(denoiser: VideoDenoiser, x: torch.Tensor, t_model: torch.Tensor, guidance: Guidance,
                      starts: Sequence[int], window: int, blend: bool, fps: float) -> torch.Tensor:
    """x: (B, C, T, h, w), t_model: (B,) → merged guided prediction (B, C, T, h, w) in ONE model call.

    All windows × all guidance branches are stacked on the batch axis (branch-major, then window).
    """
    num_frames = x.shape[2]
    length = min(window, num_frames)
    windows = torch.cat([x[:, :, s:s + length] for s in starts])  # (W·B, C, w, h, w')
    n_branches = len(guidance.branches())
    frames, tokens = guidance.stacked(len(starts))
    inputs = repeat_batch(windows, n_branches)
    out = denoiser(inputs, repeat_batch(t_model, len(starts) * n_branches), frames, tokens, fps)
    merged = guidance.combine(list(out.chunk(n_branches)))  # (W·B, C, w, h, w')
    return merge_windows(list(merged.split(x.shape[0])), starts, num_frames, blend)
