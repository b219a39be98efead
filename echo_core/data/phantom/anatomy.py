"""Heart anatomy of the two views as per-frame soft tissue masks, plus the true LV contours.

A4C (apex up): LV on the right, RV on the left wrapping the septum, LA and RA below the mitral and
tricuspid annuli, AV leaflets that shut in systole. PSAX: the LV short-axis ring and the RV crescent.
Chambers are truncated ellipses (see geometry.py for the LV volume model). A cavity is carved out of the
neighbouring walls (RV minus the LV wall = the septum), so walls never overlap blood.

Conditions change anatomy and motion the way the CardiacNet classes differ:
- asd: enlarged RA and RV, a hole in the interatrial septum with fast-moving (flow) speckle;
- pah: enlarged RV with a thick free wall and little motion, a flattened septum (D-shaped LV).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from echo_core.data.phantom.config import ClipSpec
from echo_core.data.phantom.geometry import (
    LONG_EXPONENT,
    TRUNCATION,
    CycleTiming,
    direction,
    ellipse_mask,
    halfplane_mask,
    lv_axes,
    segment_mask,
    valve_opening,
    volume_fraction,
)

LABELS = {"LV": 1, "RV": 2, "LA": 3, "RA": 4}


@dataclass(frozen=True)
class Chamber:
    """A ventricle: an ellipse with a fixed apex, truncated at its annulus `trunc * b` past the centre.

    a / a_neg: half-widths on the +n / -n side (a_neg < a flattens the septum); b: half-length; all (T,).
    """

    apex: np.ndarray
    tilt: float
    a: np.ndarray
    a_neg: np.ndarray
    b: np.ndarray
    trunc: float = TRUNCATION

    @property
    def length(self) -> np.ndarray:
        return self.b * (1 + self.trunc)

    def centers(self) -> np.ndarray:
        return self.apex[None] + self.b[:, None] * direction(self.tilt)[0][None]

    def at(self, t: int) -> Chamber:
        """The chamber frozen at frame t (a one-frame chamber)."""
        sl = slice(t, t + 1)
        return Chamber(self.apex, self.tilt, self.a[sl], self.a_neg[sl], self.b[sl], self.trunc)

    def annulus(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(T, 2) annulus corner on the -n side, on the +n side, and the annulus midpoint."""
        d, n = direction(self.tilt)
        mid = self.apex[None] + self.length[:, None] * d[None]
        half = math.sqrt(1 - self.trunc**2)
        return mid - (half * self.a_neg)[:, None] * n, mid + (half * self.a)[:, None] * n, mid

    def contour(self, t: int, num: int = 41) -> np.ndarray:
        """(num, 2) cavity outline at frame t: -n annulus corner -> apex -> +n corner (closed polygon)."""
        d, n = direction(self.tilt)
        psi = np.linspace(-math.acos(-self.trunc), math.acos(-self.trunc), num)
        side = np.where(psi < 0, self.a_neg[t], self.a[t])
        along = self.b[t] * (1 - np.cos(psi))
        return self.apex + along[:, None] * d + (side * np.sin(psi))[:, None] * n

    def chords(self, t: int, num: int = 20) -> np.ndarray:
        """(num, 2, 2) cavity chords across the long axis from apex to annulus, -n end first."""
        d, n = direction(self.tilt)
        s = self.length[t] * np.arange(1, num + 1) / num
        w = np.sqrt(np.clip(1 - ((s - self.b[t]) / self.b[t]) ** 2, 0, None))
        mid = self.apex + s[:, None] * d
        return np.stack([mid - (w * self.a_neg[t])[:, None] * n, mid + (w * self.a[t])[:, None] * n], axis=1)


@dataclass(frozen=True)
class Ellipse:
    """A closed ellipse moving per frame: centers (T, 2); a / a_neg across, b along the axis; all (T,)."""

    centers: np.ndarray
    tilt: float
    a: np.ndarray
    a_neg: np.ndarray
    b: np.ndarray

    def at(self, t: int) -> Ellipse:
        sl = slice(t, t + 1)
        return Ellipse(self.centers[sl], self.tilt, self.a[sl], self.a_neg[sl], self.b[sl])

    def contour(self, t: int, num: int = 41) -> np.ndarray:
        d, n = direction(self.tilt)
        psi = np.linspace(-math.pi, math.pi, num)[:-1]
        side = np.where(psi < 0, self.a_neg[t], self.a[t])
        return self.centers[t] + (self.b[t] * np.cos(psi))[:, None] * d + (side * np.sin(psi))[:, None] * n


class Canvas:
    """The anatomy grid of one clip: ax, ay (H, W) units; px = one pixel in units."""

    def __init__(self, ax: np.ndarray, ay: np.ndarray, px: float):
        self.ax, self.ay, self.px = ax, ay, px

    def local(self, origin: np.ndarray, tilt: float) -> tuple[np.ndarray, np.ndarray]:
        """Offsets from origin ((2,) or (T, 2)) along / across the axis: (T or 1, H, W) each."""
        d, n = direction(tilt)
        o = np.atleast_2d(origin)
        along = (self.ax * d[0] + self.ay * d[1])[None] - (o @ d).astype(np.float32)[:, None, None]
        perp = (self.ax * n[0] + self.ay * n[1])[None] - (o @ n).astype(np.float32)[:, None, None]
        return along, perp

    def chamber(self, ch: Chamber, grow: np.ndarray | float = 0.0) -> np.ndarray:
        """(T, H, W) soft mask of the chamber grown by `grow` units ((T,) or scalar; >0: the wall)."""
        grow3 = np.broadcast_to(np.asarray(grow, dtype=np.float32), ch.b.shape)[:, None, None]
        along, perp = self.local(ch.apex, ch.tilt)
        b = ch.b[:, None, None]
        mask = ellipse_mask(along - b, perp, ch.a[:, None, None] + grow3, ch.a_neg[:, None, None] + grow3,
                            b + grow3, self.px)  # fmt: skip
        return mask * halfplane_mask(along, ch.length[:, None, None] + 0.5 * grow3, self.px)

    def beyond_annulus(self, ch: Chamber) -> np.ndarray:
        """(T, H, W) soft mask of the far side of the chamber's annulus plane (where its atrium is)."""
        along, _ = self.local(ch.apex, ch.tilt)
        return 1.0 - halfplane_mask(along, ch.length[:, None, None], self.px)

    def ellipse(self, el: Ellipse, grow: float = 0.0) -> np.ndarray:
        along, perp = self.local(el.centers, el.tilt)
        b = el.b[:, None, None] + grow
        return ellipse_mask(along, perp, el.a[:, None, None] + grow, el.a_neg[:, None, None] + grow, b, self.px)

    def segments(self, p0: np.ndarray, p1: np.ndarray, radius: float) -> np.ndarray:
        """(T, H, W) capsules round p0 -> p1 ((T, 2) each), computed only on their bounding box."""
        pts = np.concatenate([p0, p1])
        lo, hi = pts.min(axis=0) - radius - 2 * self.px, pts.max(axis=0) + radius + 2 * self.px
        inside = (self.ax >= lo[0]) & (self.ax <= hi[0]) & (self.ay >= lo[1]) & (self.ay <= hi[1])
        out = np.zeros((len(p0), *self.ax.shape), dtype=np.float32)
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        if rows.size and cols.size:
            box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            out[(slice(None), *box)] = segment_mask(self.ax[box], self.ay[box], p0, p1, radius, self.px)
        return out


@dataclass(frozen=True)
class Tissue:
    """Soft masks in [0, 1], (T, H, W) unless noted, and the LV geometry behind the ground truth."""

    walls: np.ndarray
    blood: np.ndarray
    valves: np.ndarray
    jet: np.ndarray | None  # ASD shunt through the interatrial septum
    envelope: np.ndarray  # (H, W) inside the pericardium
    pericardium: np.ndarray  # (H, W)
    labels: np.ndarray  # (T, H, W) uint8, see LABELS
    lv: Chamber | Ellipse


@dataclass(frozen=True)
class Shape:
    """Per-clip anatomy parameters drawn from the rng (sizes in units, angles in degrees)."""

    lv_center: tuple[float, float]  # A4C: the LV apex; PSAX: the ring centre
    lv_tilt: float
    lv_size: float  # A4C: LV half-length b at ED; PSAX: ring radius at ED
    lv_aspect: float
    wall: float
    rv_angle: float  # A4C: RV tilt; PSAX: direction of the RV from the LV centre
    rv_ef: float
    rv_width: float
    rv_length: float
    rv_wall: float
    atrium_scale: float
    ra_scale: float
    septum: float  # LV septal half-width relative to the lateral one (PAH flattens it)
    asd_hole: bool


def draw_shape(spec: ClipSpec, rng: np.random.Generator) -> Shape:
    """Anatomy of one clip; the condition sets the class-specific sizes and motion."""
    u, c, a4c = rng.uniform, spec.condition, spec.view == "a4c"
    return Shape(
        lv_center=(u(60.0, 64.0), u(11.0, 15.0)) if a4c else (u(58.0, 62.0), u(56.0, 62.0)),
        lv_tilt=u(5.0, 12.0) if a4c else u(-15.0, 15.0),
        lv_size=u(30.0, 34.0) if a4c else u(13.0, 15.5),
        lv_aspect=u(0.42, 0.50) if a4c else u(0.88, 1.0),
        wall=u(4.5, 6.0),
        rv_angle=u(-18.0, -10.0) if a4c else u(35.0, 55.0),
        rv_ef=u(0.15, 0.25) if c == "pah" else u(0.45, 0.6),
        rv_width={"normal": 1.0, "asd": 1.35, "pah": 1.45}[c] * u(0.9, 1.1),
        rv_length={"normal": 1.0, "asd": 1.1, "pah": 1.12}[c],
        rv_wall=(4.5 if c == "pah" else 2.5) * u(0.9, 1.1),
        atrium_scale=u(0.9, 1.1),
        ra_scale={"normal": 1.0, "asd": 1.35, "pah": 1.2}[c],
        septum=0.7 if c == "pah" else 1.0,
        asd_hole=c == "asd",
    )


def _volume_ratio(ef: float, timing: CycleTiming) -> tuple[np.ndarray, np.ndarray]:
    """(V / EDV, g) per frame; g is the cycle's volume fraction (1 at ED, 0 at ES)."""
    g = volume_fraction(timing.phase, timing.systole)
    es_ratio = 1.0 - ef / 100.0
    return es_ratio + (1.0 - es_ratio) * g, g


def _wall_thickness(a: np.ndarray, b: np.ndarray, a_ed: float, b_ed: float, wall: float) -> np.ndarray:
    """(T,) wall thickness keeping the myocardial area of the ED wall (the wall thickens in systole)."""
    area = (a_ed + wall) * (b_ed + wall) - a_ed * b_ed
    return 0.5 * (-(a + b) + np.sqrt((a + b) ** 2 + 4 * area))


def _labels(masks: dict[str, np.ndarray]) -> np.ndarray:
    labels = np.zeros(next(iter(masks.values())).shape, dtype=np.uint8)
    for name in ("LA", "RA", "RV", "LV"):  # later names win where soft edges overlap
        if name in masks:
            labels[masks[name] > 0.5] = LABELS[name]
    return labels


def build_tissue(spec: ClipSpec, timing: CycleTiming, shape: Shape, canvas: Canvas) -> Tissue:
    return (_a4c if spec.view == "a4c" else _psax)(spec, timing, shape, canvas)


def _a4c(spec: ClipSpec, timing: CycleTiming, shape: Shape, canvas: Canvas) -> Tissue:
    ratio, g = _volume_ratio(spec.ef, timing)
    b_ed = shape.lv_size
    a_ed = shape.lv_aspect * b_ed
    a, b = lv_axes(ratio, b_ed, a_ed)
    lv = Chamber(np.array(shape.lv_center), shape.lv_tilt, a, a * shape.septum, b)
    wall = _wall_thickness(a, b, a_ed, b_ed, shape.wall)
    lv_cav, lv_out = canvas.chamber(lv), canvas.chamber(lv, wall)
    rv = _a4c_rv(shape, lv, g, a_ed, b_ed, timing.ed_frame)
    rv_cav, rv_out = canvas.chamber(rv) * (1 - lv_out), canvas.chamber(rv, shape.rv_wall)
    la, ra = _a4c_atria(shape, lv, g, a_ed, b_ed)
    la_out = canvas.ellipse(la, 2.0)
    la_cav = canvas.ellipse(la) * canvas.beyond_annulus(lv)
    ra_cav = canvas.ellipse(ra) * canvas.beyond_annulus(rv) * (1 - la_out) * (1 - lv_out)
    walls = np.maximum.reduce([lv_out, rv_out, la_out, canvas.ellipse(ra, 2.0)])
    blood = np.maximum.reduce([lv_cav, rv_cav, la_cav, ra_cav])
    jet = None
    if shape.asd_hole:  # a gap in the interatrial septum, on the LA wall facing the RA
        _, n = direction(shape.lv_tilt)
        hole = la.centers - (la.a_neg + 1.0)[:, None] * n
        jet = canvas.segments(hole, hole, 3.5)
        blood = np.maximum(blood, jet)
    valves = _valves(canvas, lv, g, timing) + _valves(canvas, rv, g, timing)
    ed = timing.ed_frame
    envelope, pericardium = _envelope(
        canvas, [(lv.at(ed), wall[ed]), (rv.at(ed), shape.rv_wall), (la.at(ed), 2.0), (ra.at(ed), 2.0)]
    )
    labels = _labels({"LV": lv_cav, "RV": rv_cav, "LA": la_cav, "RA": ra_cav})
    return Tissue(walls, blood, np.minimum(valves, 1.0), jet, envelope, pericardium, labels, lv)


def _a4c_rv(shape: Shape, lv: Chamber, g: np.ndarray, a_ed: float, b_ed: float, ed: int) -> Chamber:
    """RV left of the LV, its cavity pressed onto the septum; apex ~ a third lower than the LV apex."""
    h = 1.0 - shape.rv_ef * (1.0 - g)  # RV volume / RV EDV
    rv_b = 0.78 * b_ed * shape.rv_length * h**0.2
    rv_a = 0.85 * a_ed * shape.rv_width * h**0.4
    d_lv, n_lv = direction(shape.lv_tilt)
    centre = lv.centers()[ed] - n_lv * (a_ed * shape.septum + shape.wall + rv_a[ed] - 3.0) + 4.0 * d_lv
    d_rv, _ = direction(shape.rv_angle)
    return Chamber(centre - rv_b[ed] * d_rv, shape.rv_angle, rv_a, rv_a, rv_b, trunc=0.5)


def _a4c_atria(shape: Shape, lv: Chamber, g: np.ndarray, a_ed: float, b_ed: float) -> tuple[Ellipse, Ellipse]:
    """LA hangs from the mitral annulus (moving with it) and fills in systole; RA abuts it on the left."""
    filling = 1.0 - g
    la_a = 0.9 * a_ed * shape.atrium_scale * (1 + 0.12 * filling)
    la_b = 0.5 * b_ed * shape.atrium_scale * (1 + 0.2 * filling)
    d, n = direction(shape.lv_tilt - 4.0)
    la_c = lv.annulus()[2] + (la_b - 2.0)[:, None] * d
    ra_a, ra_b = 0.85 * la_a * shape.ra_scale, la_b * shape.ra_scale
    # RA cavity overlaps the LA wall by 1.5 units: the carved remainder is a 2-unit interatrial septum
    ra_c = la_c - (la_a + 2.0 + ra_a - 1.5)[:, None] * n + ((ra_b - la_b) * 0.6)[:, None] * d
    return (Ellipse(la_c, shape.lv_tilt - 4.0, la_a, la_a, la_b),
            Ellipse(ra_c, shape.lv_tilt - 4.0, ra_a, ra_a, ra_b))  # fmt: skip


def _valves(canvas: Canvas, ventricle: Chamber, g: np.ndarray, timing: CycleTiming) -> np.ndarray:
    """Two leaflets hinged at the annulus corners: across the annulus in systole, towards the apex when open."""
    d, n = direction(ventricle.tilt)
    opening = valve_opening(timing.phase, timing.systole)[:, None]
    corner_neg, corner_pos, _ = ventricle.annulus()
    half = np.linalg.norm(corner_pos - corner_neg, axis=1)[:, None] / 2
    masks = []
    for hinge, side, length in ((corner_neg, 1.0, 1.0), (corner_pos, -1.0, 0.75)):
        shut = side * n + 0.2 * d  # bowed slightly into the atrium
        open_ = -d - 0.25 * side * n
        v = (1 - opening) * shut + opening * open_
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        masks.append(canvas.segments(hinge, hinge + length * half * v, 0.9))
    return np.maximum(*masks)


def _envelope(canvas: Canvas, parts: list[tuple[Chamber | Ellipse, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(inside, ring) (H, W): the pericardial sac round the ED heart (each part grown by its wall) and its
    bright lining."""

    def union(grow: float) -> np.ndarray:
        masks = [
            canvas.chamber(p, wall + grow)[0] if isinstance(p, Chamber) else canvas.ellipse(p, wall + grow)[0]
            for p, wall in parts
        ]
        return np.maximum.reduce(masks)

    inside = union(2.5)
    return inside, np.clip(union(4.0) - inside, 0.0, 1.0)


def _psax(spec: ClipSpec, timing: CycleTiming, shape: Shape, canvas: Canvas) -> Tissue:
    ratio, g = _volume_ratio(spec.ef, timing)
    T = len(ratio)
    r = shape.lv_size * ratio ** ((1 - LONG_EXPONENT) / 2)  # short-axis radius (area ~ V^(1-LONG_EXPONENT))
    theta = math.radians(shape.rv_angle)
    to_rv = np.array([-math.cos(theta), -math.sin(theta)])  # up-left: the RV is anterior
    tilt = math.degrees(math.atan2(to_rv[1], -to_rv[0]))  # the -n side of the LV faces the RV
    centre = np.repeat(np.array([shape.lv_center]), T, axis=0)
    lv = Ellipse(centre, tilt, r, r * shape.septum, r * shape.lv_aspect)
    wall = _wall_thickness(r, r * shape.lv_aspect, shape.lv_size, shape.lv_size * shape.lv_aspect, shape.wall)
    lv_cav = canvas.ellipse(lv)
    lv_out = canvas.ellipse(Ellipse(centre, tilt, r + wall, r * shape.septum + wall, r * shape.lv_aspect + wall))
    h = 1.0 - shape.rv_ef * (1.0 - g)
    rv_b = 0.6 * shape.lv_size * shape.rv_width * h**0.7  # radial depth of the crescent
    rv_a = 1.9 * shape.lv_size * shape.rv_length * h**0.3  # its tangential extent
    offset = shape.lv_size * shape.septum + shape.wall + rv_b[timing.ed_frame] - 6.0
    rv = Ellipse(np.repeat((centre[0] + offset * to_rv)[None], T, axis=0),
                 math.degrees(math.atan2(to_rv[0], to_rv[1])), rv_a, rv_a, rv_b)  # fmt: skip
    rv_cav, rv_out = canvas.ellipse(rv) * (1 - lv_out), canvas.ellipse(rv, shape.rv_wall)
    ed = timing.ed_frame
    envelope, pericardium = _envelope(canvas, [(lv.at(ed), wall[ed]), (rv.at(ed), shape.rv_wall)])
    labels = _labels({"LV": lv_cav, "RV": rv_cav})
    return Tissue(np.maximum(lv_out, rv_out), np.maximum(lv_cav, rv_cav), np.zeros_like(lv_cav), None,
                  envelope, pericardium, labels, lv)  # fmt: skip


def chords_from_contour(contour: np.ndarray, axis: np.ndarray, num: int = 20) -> np.ndarray:
    """(num, 2, 2) chords across the long axis [apex, annulus midpoint] of a closed cavity contour (N, 2),
    from apex to annulus, endpoints on the contour (EchoNet-Dynamic tracing rows), -n side first."""
    apex, base = axis
    length = float(np.linalg.norm(base - apex))
    d = (base - apex) / length
    n = np.array([d[1], -d[0]])  # the chambers' +n side (lateral wall in A4C)
    rel = contour - apex
    along, across = rel @ d, rel @ n
    closed = np.r_[np.arange(len(contour)), 0]
    chords = []
    for s in length * np.arange(1, num + 1) / num:
        hits = _crossings(along[closed], across[closed], min(s, length - 1e-6))
        lo, hi = min(hits, default=0.0), max(hits, default=0.0)
        chords.append([apex + s * d + lo * n, apex + s * d + hi * n])
    return np.array(chords)


def _crossings(along: np.ndarray, across: np.ndarray, s: float) -> list[float]:
    """Perpendicular offsets where the polyline (along, across) crosses along == s."""
    a0, a1 = along[:-1], along[1:]
    k = np.flatnonzero((a0 - s) * (a1 - s) <= 0)
    out = []
    for i in k:
        t = 0.5 if a1[i] == a0[i] else (s - a0[i]) / (a1[i] - a0[i])
        out.append(float(across[i] + t * (across[i + 1] - across[i])))
    return out
