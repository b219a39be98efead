"""VAE losses: pixel reconstruction, KL to N(0, I), and a PatchGAN discriminator with hinge losses.

The reference VAE was trained with LPIPS + KL (weight 1e-6) + a hinge PatchGAN from step 50001. LPIPS needs
downloaded VGG weights, so we use L1/L2 reconstruction; the KL and the adversarial parts keep the reference's
form (KL summed per latent, averaged over the batch; hinge losses on patch logits).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor, kind: Literal["l1", "l2"] = "l1") -> torch.Tensor:
    """Mean per-pixel error. x, x_hat: (B, C, H, W) in [-1, 1]."""
    if kind == "l1":
        return (x_hat - x).abs().mean()
    if kind == "l2":
        return (x_hat - x).pow(2).mean()
    raise ValueError(f"unknown reconstruction loss {kind!r}; choose 'l1' or 'l2'")


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) ‖ N(0, I)) summed over (C, h, w), averaged over the batch. mean: (B, C, h, w)."""
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(dim=1).mean()


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / taming) discriminator: (B, C, H, W) → patch logits (B, 1, H', W')."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            blocks += [nn.Conv2d(width, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            width = out
        blocks.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: mean(relu(1 − D(x))) and mean(relu(1 + D(x̂))), averaged."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: raise the discriminator's score of reconstructions."""
    return -fake_logits.mean()
