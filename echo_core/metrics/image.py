"""Image fidelity metrics (PSNR, SSIM) on float tensors, one value per image.

Both compute in float64 after casting, so uint8 inputs cannot overflow (the reference systems subtract
uint8 arrays and wrap around), and SSIM filters over the spatial axes (H, W) of (N, C, H, W) tensors
(the reference runs it over the wrong axis).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x).to(torch.float64)


def psnr(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image. a, b: (N, C, H, W) → (N,); identical images give inf.

    `data_range` is max − min of the pixel scale: 2.0 for [-1, 1], 255 for uint8.
    """
    a, b = _as_float(a), _as_float(b)
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 2.0, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004, Gaussian 11×11, σ 1.5, valid region).

    a, b: (N, C, H, W) → (N,), the mean SSIM over channels and positions; 1.0 for identical images.
    """
    a, b = _as_float(a), _as_float(b)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim expects two (N, C, H, W) tensors of one shape, got {a.shape} and {b.shape}")
    channels = a.shape[1]
    g = _gaussian_1d(min(window, a.shape[-1], a.shape[-2]), sigma)
    g_h = g.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    g_w = g.view(1, 1, 1, -1).expand(channels, 1, 1, -1)

    def blur(x: torch.Tensor) -> torch.Tensor:  # separable Gaussian over H then W, per channel
        return F.conv2d(F.conv2d(x, g_h, groups=channels), g_w, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).flatten(1).mean(dim=1)
