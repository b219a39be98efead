"""Classifier-free guidance, for any model and any latent shape (video or image).

The null condition is the model's real one (`ConditionEncoder.null_condition`, or an image model's null
class) and, for the optional frame guidance of a video model, the all-zero null frame that frame dropout
trained on (fixes seed-systems §8.3/§8.4/§8.6):
    no frame guidance:  v = v(f, ∅) + s_c·(v(f, c) − v(f, ∅))
    frame guidance:     v = v(∅, ∅) + s_f·(v(f, ∅) − v(∅, ∅)) + s_c·(v(f, c) − v(f, ∅))
An image model has no frame: its branches are (c) and (∅) only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from echo_core.models.conditioning import null_frame


def repeat_batch(x: torch.Tensor, times: int) -> torch.Tensor:
    """(B, ...) → (times·B, ...): `times` copies of the whole batch, one after the other."""
    return x.repeat(times, *([1] * (x.ndim - 1)))


@dataclass(frozen=True)
class Guidance:
    """Conditioning of one batch. cond_tokens / null_tokens: the condition and its null, batched on dim 0
    ((B, L, D) tokens, (B,) class ids, ...); cond_frame: (B, C, h, w) for a video model, None for images."""

    cond_tokens: torch.Tensor
    null_tokens: torch.Tensor
    guidance_scale: float = 1.0
    cond_frame: torch.Tensor | None = None
    frame_guidance_scale: float | None = None

    def branches(self) -> list[tuple[torch.Tensor | None, torch.Tensor]]:
        """(frame, tokens) of each model pass: full, [frame-only], [unconditional]."""
        full = (self.cond_frame, self.cond_tokens)
        frame_only = (self.cond_frame, self.null_tokens)
        if self.frame_guidance_scale is not None:
            if self.cond_frame is None:
                raise ValueError("frame guidance needs a conditioning frame")
            return [full, frame_only, (null_frame(self.cond_frame), self.null_tokens)]
        return [full, frame_only] if self.guidance_scale != 1.0 else [full]

    def stacked(self, times: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(frames, tokens) of all branches for ONE model call: branch-major, each branch's batch repeated
        `times` times (e.g. once per long-video window). frames is None for an image model."""
        branches = self.branches()
        tokens = torch.cat([repeat_batch(tok, times) for _, tok in branches])
        if self.cond_frame is None:
            return None, tokens
        return torch.cat([repeat_batch(f, times) for f, _ in branches]), tokens

    def combine(self, outs: list[torch.Tensor]) -> torch.Tensor:
        """The model's outputs, one per branch (same order as `branches`) → the guided prediction."""
        if len(outs) == 1:
            return outs[0]
        full, frame_only = outs[0], outs[1]
        guided = frame_only + self.guidance_scale * (full - frame_only)
        if len(outs) == 3:
            guided = guided + (self.frame_guidance_scale - 1.0) * (frame_only - outs[2])
        return guided


def guided_image_prediction(denoiser, x: torch.Tensor, t_model: torch.Tensor,
                            guidance: Guidance) -> torch.Tensor:
    """x: (B, C, h, w), t_model: (B,) → guided prediction (B, C, h, w), all branches in ONE call of
    `denoiser(x, t, tokens)`."""
    n = len(guidance.branches())
    _, tokens = guidance.stacked(1)
    out = denoiser(repeat_batch(x, n), repeat_batch(t_model, n), tokens)
    return guidance.combine(list(out.chunk(n)))
