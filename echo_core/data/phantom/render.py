"""Image formation: tissue reflectivity -> scatterers -> point-spread function -> log compression -> sector.

A simplified ultrasound model, vectorised over the whole clip: complex Gaussian scatterers weighted by the
square root of the local reflectivity are blurred by a Gaussian PSF (longer laterally than axially), so
the envelope is Rayleigh speckle with spatial correlation. Scatterers follow an AR(1) in time (tissue
speckle stays partly coherent between frames); blood uses the same field scrolled every frame (moving
"smoke"), the ASD shunt a faster cross-septal scroll. Log compression to a 42-48 dB dynamic range and a
fan-shaped field of view with a black outside finish the frame.
"""

from __future__ import annotations

import math

import numpy as np

from echo_core.data.phantom.anatomy import Canvas, Chamber, Tissue, build_tissue, draw_shape
from echo_core.data.phantom.config import ClipSpec, PhantomClip
from echo_core.data.phantom.geometry import TRANSDUCER, ClipTransform, cycle_timing

# Relative backscatter (linear power). Blood is ~30 dB below myocardium; the pericardium is the brightest.
REFLECTIVITY = {"background": 0.003, "fat": 0.012, "pericardium": 0.4, "myocardium": 0.06, "blood": 0.0002,
                "valve": 0.35, "near_field": 0.25}  # fmt: skip
SECTOR_HALF_ANGLE = math.radians(42.0)
SECTOR_DEPTH = (6.0, 118.0)  # units from the transducer
TISSUE_COHERENCE = 0.88  # frame-to-frame correlation of tissue scatterers
BLOOD_SPEED = 2  # rows per frame the blood speckle scrolls
JET_SPEED = 3  # columns per frame across the ASD


def render_clip(spec: ClipSpec, rng: np.random.Generator) -> PhantomClip:
    """Render one clip realising `spec` (pure: the same spec and rng state give the same arrays).

    Returns frames (T, H, W) uint8, the chamber labels, the true ED/ES frames and LV contours in pixels.
    """
    height, width = spec.frame_size
    timing = cycle_timing(spec.num_frames, spec.fps, spec.heart_rate_bpm, rng)
    shape = draw_shape(spec, rng)
    pose = ClipTransform(height, width, angle=math.radians(rng.uniform(-6, 6)), scale=rng.uniform(1.02, 1.14),
                         shift=(rng.uniform(-3, 3), rng.uniform(-2, 2)))  # fmt: skip
    tissue = build_tissue(spec, timing, shape, Canvas(*pose.anatomy_grid(), pose.pixel_in_anatomy_units))
    radius, angle = _polar(pose)
    reflectivity = _reflectivity(tissue, rng, radius)
    amplitude = _speckle(reflectivity, tissue, rng)
    frames = _display(amplitude, radius, angle, pose, rng)
    ed, es = timing.ed_frame, timing.es_frame
    return PhantomClip(
        frames=frames,
        labels=tissue.labels,
        ed_frame=ed,
        es_frame=es,
        ed_contour=pose.to_pixels(tissue.lv.contour(ed)),
        es_contour=pose.to_pixels(tissue.lv.contour(es)),
        ed_axis=_axis(tissue.lv, ed, pose),
        es_axis=_axis(tissue.lv, es, pose),
        edv=spec.edv,
        esv=spec.esv,
        ef=spec.ef,
        heart_rate_bpm=spec.heart_rate_bpm,
        fps=spec.fps,
    )


def _axis(lv, t: int, pose: ClipTransform) -> np.ndarray | None:
    """(2, 2) [apex, annulus midpoint] in pixels for a ventricle seen long-axis; None in short axis."""
    if not isinstance(lv, Chamber):
        return None
    return pose.to_pixels(np.stack([lv.apex, lv.annulus()[2][t]]))


def _polar(pose: ClipTransform) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) depth (units) and beam angle (rad) of every pixel from the transducer."""
    gx, gy = pose.image_units()
    return np.hypot(gx - TRANSDUCER[0], gy - TRANSDUCER[1]), np.arctan2(gx - TRANSDUCER[0], gy - TRANSDUCER[1])


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """(H, W) zero-mean unit-variance Gaussian field with correlation length ~sigma pixels."""
    fy, fx = np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :]
    spectrum = np.fft.rfft2(rng.standard_normal(shape)) * np.exp(-2 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    field = np.fft.irfft2(spectrum, s=shape)
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def _reflectivity(tissue: Tissue, rng: np.random.Generator, radius: np.ndarray) -> np.ndarray:
    """(T, H, W) linear backscatter from the tissue masks, with slowly varying texture."""
    r = REFLECTIVITY
    shape = tissue.envelope.shape
    texture = [np.exp(0.35 * _smooth_noise(rng, shape, s)) for s in (6.0, 3.0, 4.0)]
    static = r["background"] * texture[0]
    static += (r["fat"] - static) * tissue.envelope
    static += (r["pericardium"] * texture[2] - static) * tissue.pericardium
    static += r["near_field"] * np.exp(-(radius - SECTOR_DEPTH[0]) / 5.0)  # transducer reverberation
    e = static[None] + (r["myocardium"] * texture[1] - static)[None] * tissue.walls
    # blood is mixed in decibels: the half-way grey level then sits on the true cavity outline, so the dark
    # area a reader (or a threshold) sees is the area the volume model was solved for
    log_e = np.log(e)
    log_e += (math.log(r["blood"]) - log_e) * tissue.blood
    e = np.exp(log_e, out=log_e)
    e += (r["valve"] - e) * tissue.valves
    return e


def _scatterers(rng: np.random.Generator, num_frames: int, shape: tuple[int, int]) -> np.ndarray:
    """(T, H, W) complex64 unit-variance scatterers, AR(1) in time (partly coherent speckle)."""
    noise = rng.standard_normal((num_frames, *shape, 2), dtype=np.float32).view(np.complex64)[..., 0]
    noise *= np.float32(math.sqrt(0.5))
    keep, fresh = np.float32(TISSUE_COHERENCE), np.float32(math.sqrt(1 - TISSUE_COHERENCE**2))
    for t in range(1, num_frames):
        noise[t] = keep * noise[t - 1] + fresh * noise[t]
    return noise


def _scrolled(field: np.ndarray, speed: int, axis: int) -> np.ndarray:
    """Frame t of `field` rolled by t*speed pixels along `axis` (1 rows, 2 columns): speckle that flows."""
    T, n = field.shape[0], field.shape[axis]
    idx = (np.arange(n)[None, :] - speed * np.arange(T)[:, None]) % n
    if axis == 1:
        return field[np.arange(T)[:, None], idx]
    return np.take_along_axis(field, np.broadcast_to(idx[:, None, :], field.shape), axis=2)


def _speckle(reflectivity: np.ndarray, tissue: Tissue, rng: np.random.Generator) -> np.ndarray:
    """(T, H, W) float32 echo amplitude: |PSF * (sqrt(E) * scatterers)|, normalised so E=1 gives ~0.89."""
    T, H, W = reflectivity.shape
    base = _scatterers(rng, T, (H, W))
    field = base + (_scrolled(base, BLOOD_SPEED, 1) - base) * tissue.blood
    if tissue.jet is not None:
        field += (_scrolled(base, JET_SPEED, 2) - field) * tissue.jet
    field *= np.sqrt(reflectivity)
    fy, fx = np.fft.fftfreq(H)[:, None], np.fft.fftfreq(W)[None, :]
    psf = np.exp(-2 * np.pi**2 * (1.6**2 * fx**2 + 0.9**2 * fy**2)).astype(np.float32)
    out = np.abs(np.fft.ifft2(np.fft.fft2(field) * psf))
    return (out / np.sqrt(np.mean(psf**2))).astype(np.float32)


def _display(amplitude: np.ndarray, radius: np.ndarray, angle: np.ndarray, pose: ClipTransform,
             rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Log-compress, apply depth attenuation and the sector mask -> (T, H, W) uint8, 0 outside the fan."""
    px = pose.units_per_pixel
    attenuation = np.exp(-rng.uniform(0.2, 0.6) * radius / SECTOR_DEPTH[1])
    decibels = 20 * np.log10(amplitude * attenuation + 1e-5)
    dynamic_range = rng.uniform(42.0, 48.0)
    level = np.clip(1.0 + (decibels + rng.uniform(-1.0, 1.0)) / dynamic_range, 0.0, 1.0) ** 1.6
    sector = (
        np.clip(0.5 + (SECTOR_DEPTH[1] - radius) / px, 0, 1)
        * np.clip(0.5 + (radius - SECTOR_DEPTH[0]) / px, 0, 1)
        * np.clip(0.5 + (SECTOR_HALF_ANGLE - np.abs(angle)) * radius / px, 0, 1)
    )
    return np.rint(255.0 * level * sector).astype(np.uint8)
