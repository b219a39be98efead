"""Phantom generator: ground truth realised in pixels, exact raw layouts per kind, byte determinism, CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib.path import Path as MPath
from scipy import ndimage

from echo_core.config import validate_config
from echo_core.data.phantom import ClipSpec, PhantomConfig, render_clip
from echo_core.data.phantom.datasets import generate_dataset, generate_default_data, to_nifti_layout
from echo_core.data.phantom.geometry import LONG_EXPONENT, area_length_volume
from echo_core.errors import ConfigError, UsageError
from echo_core.utils.hashing import sha256_tree

SMALL = {"num_frames": 40, "fps": 50.0}


def _clip(view="a4c", ef=60.0, seed=0, **kw):
    spec = ClipSpec(view=view, ef=ef, heart_rate_bpm=kw.pop("heart_rate_bpm", 80.0), **{**SMALL, **kw})
    return render_clip(spec, np.random.default_rng(seed))


def _dark_area(frame: np.ndarray, contour: np.ndarray, axis: np.ndarray | None) -> float:
    """Dark (blood) pixels of the smoothed frame inside the true LV region (contour dilated by 3 px,
    cut at the mitral annulus in A4C so the LA does not count)."""
    h, w = frame.shape
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))
    pts = np.stack([jj.ravel(), ii.ravel()], 1)
    region = ndimage.binary_dilation(MPath(contour).contains_points(pts).reshape(h, w), iterations=3)
    if axis is not None:
        d = (axis[1] - axis[0]) / np.linalg.norm(axis[1] - axis[0])
        region &= ((pts - axis[0]) @ d <= np.linalg.norm(axis[1] - axis[0]) + 0.5).reshape(h, w)
    smooth = ndimage.gaussian_filter(frame.astype(float), 1.5)
    return float((region & (smooth < 85)).sum())


def _image_ef(clip) -> float:
    """EF measured from the pixels: area-length (A4C) or short-axis area ratio (PSAX)."""
    a_ed = _dark_area(clip.frames[clip.ed_frame], clip.ed_contour, clip.ed_axis)
    a_es = _dark_area(clip.frames[clip.es_frame], clip.es_contour, clip.es_axis)
    if clip.ed_axis is None:
        return 100 * (1 - (a_es / a_ed) ** (1 / (1 - LONG_EXPONENT)))
    l_ed, l_es = (float(np.linalg.norm(ax[1] - ax[0])) for ax in (clip.ed_axis, clip.es_axis))
    return 100 * (1 - area_length_volume(a_es, l_es) / area_length_volume(a_ed, l_ed))


def _poly_area(c: np.ndarray) -> float:
    x, y = c[:, 0], c[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


# ----------------------------------------------------------------------------------------------- clips


def test_render_clip_shapes_sector_and_ground_truth():
    clip = _clip(ef=55.0, edv=120.0)
    assert clip.frames.shape == (40, 112, 112) and clip.frames.dtype == np.uint8
    assert clip.labels.shape == clip.frames.shape and set(np.unique(clip.labels)) == {0, 1, 2, 3, 4}
    assert 0 <= clip.ed_frame < clip.es_frame < 40
    assert clip.esv == pytest.approx(120.0 * 0.45) and clip.ef == 55.0
    # dark outside the fan: top corners and bottom corners are exactly 0 in every frame
    for corner in (np.s_[:, :10, :10], np.s_[:, :10, -10:], np.s_[:, -4:, :6], np.s_[:, -4:, -6:]):
        assert clip.frames[corner].max() == 0
    # the LV label at ED/ES is the traced cavity
    for frame, contour in ((clip.ed_frame, clip.ed_contour), (clip.es_frame, clip.es_contour)):
        assert (clip.labels[frame] == 1).sum() == pytest.approx(_poly_area(contour), rel=0.05)


def test_render_clip_is_deterministic_per_seed():
    a, b, c = _clip(seed=3), _clip(seed=3), _clip(seed=4)
    assert np.array_equal(a.frames, b.frames) and a.ed_frame == b.ed_frame
    assert not np.array_equal(a.frames, c.frames)


def test_speckle_is_correlated_and_partly_coherent_in_time():
    clip = _clip(seed=1)
    tissue = clip.frames[:, 60:100, 20:90].astype(float)
    tissue = tissue - tissue.mean(axis=(1, 2), keepdims=True)
    lag = lambda a, b: float((a * b).mean() / np.sqrt((a * a).mean() * (b * b).mean()))  # noqa: E731
    assert lag(tissue[:, :, :-1], tissue[:, :, 1:]) > 0.3  # neighbouring pixels correlate (speckle grain)
    frame_corr = lag(tissue[:-1], tissue[1:])
    assert 0.3 < frame_corr < 0.98  # frames correlate, but speckle decorrelates (not frozen, not white)


@pytest.mark.parametrize("view", ["a4c", "psax"])
def test_requested_ef_is_realised_in_the_pixels(view):
    requested = [25.0, 40.0, 55.0, 70.0, 80.0]
    measured = [_image_ef(_clip(view, ef, seed=int(ef))) for ef in requested]
    errors = np.abs(np.array(measured) - requested)
    assert np.corrcoef(requested, measured)[0, 1] > 0.95, measured
    assert errors.mean() < 3.5 and errors.max() < 7.5, measured


def test_contours_realise_ef_exactly_with_the_area_length_model():
    for ef in (30.0, 65.0):
        clip = _clip(ef=ef, seed=2)
        v = [area_length_volume(_poly_area(c), float(np.linalg.norm(ax[1] - ax[0])))
             for c, ax in ((clip.ed_contour, clip.ed_axis), (clip.es_contour, clip.es_axis))]  # fmt: skip
        assert 100 * (1 - v[1] / v[0]) == pytest.approx(ef, abs=1.0)


def test_too_few_frames_for_one_systole_is_a_config_error():
    with pytest.raises(ConfigError, match="systole"):
        _clip(num_frames=8, fps=50.0, heart_rate_bpm=40.0)


def test_phantom_config_is_strict():
    with pytest.raises(ConfigError, match="sead"):
        validate_config(PhantomConfig, {"sead": 1})
    with pytest.raises(ConfigError, match="low <= high"):
        validate_config(PhantomConfig, {"dynamic": {"num_videos": 2, "fps": [50], "ef": [70, 20]}})
    assert validate_config(PhantomConfig, {"seed": 3}).for_kind("cardiacnet").frame_size == (96, 128)


# ----------------------------------------------------------------------------------------------- layouts


def test_dynamic_layout_columns_splits_and_tracings(tmp_path):
    from echo_core.data.video import probe_video

    out = generate_dataset("dynamic", tmp_path / "dyn", num_videos=8, seed=5, num_frames=32)
    fl = pd.read_csv(out / "FileList.csv", dtype={"FileName": str})
    assert list(fl.columns) == ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS",
                                "NumberOfFrames", "Split"]  # fmt: skip
    assert not fl.FileName.str.contains(r"\.").any() and fl.FileName.is_unique
    assert set(fl.Split) == {"TRAIN", "VAL", "TEST"} and (fl.Split == "TRAIN").sum() >= 4
    assert np.allclose(fl.EF, 100 * (fl.EDV - fl.ESV) / fl.EDV, atol=0.05)
    row = fl.iloc[0]
    info = probe_video(out / "Videos" / f"{row.FileName}.avi")
    assert (info.num_frames, info.height, info.width, info.fps) == (32, 112, 112, row.FPS)
    vt = pd.read_csv(out / "VolumeTracings.csv")
    assert list(vt.columns) == ["FileName", "X1", "Y1", "X2", "Y2", "Frame"]
    assert vt.FileName.str.endswith(".avi").all()
    truth = pd.read_csv(out / "GROUND_TRUTH.csv", dtype={"FileName": str}).set_index("FileName")
    for name, rows in vt.groupby("FileName", sort=False):
        stem = name[: -len(".avi")]
        assert list(rows.Frame.drop_duplicates()) == [truth.loc[stem, "es_frame"], truth.loc[stem, "ed_frame"]]
        assert (rows.groupby("Frame").size() == 21).all()
        es, ed = (rows[rows.Frame == truth.loc[stem, k]] for k in ("es_frame", "ed_frame"))
        # the first row is the long axis, apex (top) first; ED chords are wider than ES chords
        assert es.iloc[0].Y1 < es.iloc[0].Y2
        assert (ed.X2 - ed.X1).iloc[1:].sum() > (es.X2 - es.X1).iloc[1:].sum()


@pytest.mark.parametrize("kind", ["pediatric-a4c", "pediatric-psax"])
def test_pediatric_raw_layout(tmp_path, kind):
    from echo_core.data.video import probe_video

    out = generate_dataset(kind, tmp_path / kind, num_videos=10, seed=1, num_frames=24)
    fl = pd.read_csv(out / "FileList.csv")
    assert list(fl.columns) == ["FileName", "EF", "Sex", "Age", "Weight", "Height", "Split"]
    assert fl.FileName.str.endswith(".avi").all()
    assert sorted(fl.Split) == list(range(10))  # folds are ints, 8 and 9 included
    fps = {probe_video(out / "Videos" / name).fps for name in fl.FileName}
    assert fps == {30.0, 50.0}  # mixed acquisition rates, like the real data
    vt = pd.read_csv(out / "VolumeTracings.csv")
    assert list(vt.columns) == ["FileName", "X", "Y", "Frame"]
    truth = pd.read_csv(out / "GROUND_TRUTH.csv").set_index("FileName")
    for name, rows in vt.groupby("FileName"):
        assert set(rows.Frame) == {truth.loc[name, "ed_frame"], truth.loc[name, "es_frame"]}
        assert rows.X.between(0, 111).all() and rows.Y.between(0, 111).all()


def test_cardiacnet_nifti_tree_orientation_labels_and_classes(tmp_path):
    import nibabel as nib

    out = generate_dataset("cardiacnet", tmp_path / "cn", num_videos=12, seed=2, num_frames=24)
    truth = pd.read_csv(out / "GROUND_TRUTH.csv", dtype={"patient": str})
    assert sorted(truth.class_name.value_counts().to_dict().items()) == [
        ("ASD", 3), ("Non-ASD", 3), ("Non-PAH", 3), ("PAH", 3)]  # fmt: skip
    assert truth.patient_number.is_unique and truth.patient_number.min() >= 1
    rv_mean: dict[str, list[float]] = {}
    right_left: dict[str, list[float]] = {}
    for row in truth.itertuples():
        folder = out / f"CardiacNet-{row.condition}" / row.class_name / row.patient
        assert sorted(p.name for p in folder.iterdir()) == [f"{row.patient}_image.nii", f"{row.patient}_label.nii"]
        data = nib.load(folder / f"{row.patient}_image.nii").get_fdata()
        assert data.shape == (128, 96, 24)  # (W, H, T) of a 96x128 upright frame, time on axis 2
        assert data.dtype == np.float64 and (data.min() < -50 or data.max() > 300)  # not 0-255
        upright = np.flip(np.rot90(data, k=1, axes=(0, 1)), axis=1)  # the importer's orientation fix
        frame = upright[:, :, 0]
        assert np.ptp(frame[3, :20]) == 0 and frame[3, 60:68].max() > frame[3, 0]  # apex at the top centre
        assert frame[-1, 0] == frame[0, 0]  # bottom corners outside the fan
        labels = np.asarray(nib.load(folder / f"{row.patient}_label.nii").dataobj)
        assert set(np.unique(labels)) == {0, 1, 2, 3, 4}
        # a fixed box on the RV side (left of the septum, mid-ventricle)
        window = (upright - upright.min()) / np.ptp(upright)
        rv_mean.setdefault(row.class_name, []).append(float(window[30:60, 40:58].mean()))
        right, left = np.isin(labels, (2, 4)).sum(), np.isin(labels, (1, 3)).sum()
        right_left.setdefault(row.class_name, []).append(right / left)
    assert max(rv_mean["PAH"]) < min(rv_mean["Non-PAH"])  # enlarged RV: more dark blood in the box
    assert min(right_left["ASD"]) > max(right_left["Non-ASD"])  # enlarged right heart
    assert min(right_left["PAH"]) > max(right_left["Non-PAH"])


def test_nifti_layout_round_trips_through_the_importer_transform():
    frames = np.arange(2 * 3 * 5).reshape(2, 3, 5)
    stored = to_nifti_layout(frames)
    assert stored.shape == (5, 3, 2)
    restored = np.moveaxis(np.flip(np.rot90(stored, k=1, axes=(0, 1)), axis=1), 2, 0)
    assert np.array_equal(restored, frames)


# ----------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("kind", ["dynamic", "pediatric-psax", "cardiacnet"])
def test_same_seed_gives_byte_identical_trees_for_any_worker_count(tmp_path, kind):
    a = generate_dataset(kind, tmp_path / "a", num_videos=4, seed=9, num_frames=20)
    b = generate_dataset(kind, tmp_path / "b", num_videos=4, seed=9, num_frames=20, workers=2)  # in 2 processes
    c = generate_dataset(kind, tmp_path / "c", num_videos=4, seed=10, num_frames=20)
    assert sha256_tree(a) == sha256_tree(b) != sha256_tree(c)


def test_refuses_to_overwrite_unless_asked_and_skips_identical(tmp_path):
    out = generate_dataset("pediatric-a4c", tmp_path / "p", num_videos=2, seed=1, num_frames=20)
    before = sha256_tree(out)
    assert generate_dataset("pediatric-a4c", out, num_videos=2, seed=1, num_frames=20) == out  # up to date
    with pytest.raises(UsageError, match="not empty"):
        generate_dataset("pediatric-a4c", out, num_videos=2, seed=2, num_frames=20)
    assert sha256_tree(out) == before
    generate_dataset("pediatric-a4c", out, num_videos=2, seed=2, num_frames=20, overwrite=True)
    assert sha256_tree(out) != before
    assert [p.name for p in tmp_path.iterdir()] == ["p"]  # no temp folders left behind
    with pytest.raises(UsageError, match="unknown phantom kind"):
        generate_dataset("echonet", tmp_path / "x", num_videos=1, seed=0)


def test_generate_default_data_writes_the_four_sets(tmp_path):
    small = {"num_videos": 4, "num_frames": [20, 24]}
    cfg = validate_config(PhantomConfig, {k: small for k in ("dynamic", "pediatric_a4c", "pediatric_psax")}
                          | {"cardiacnet": {**small, "fps": [30.0], "frame_size": [64, 80]}})  # fmt: skip
    paths = generate_default_data(tmp_path, cfg)
    assert {k: p.relative_to(tmp_path).as_posix() for k, p in paths.items()} == {
        "dynamic": "EchoNet-Dynamic", "pediatric-a4c": "EchoNet-Pediatric/A4C",
        "pediatric-psax": "EchoNet-Pediatric/PSAX", "cardiacnet": "CardiacNet"}  # fmt: skip
    assert len(list((tmp_path / "CardiacNet").glob("CardiacNet-*/*/*/*_image.nii"))) == 4


# ----------------------------------------------------------------------------------------------- CLI


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)  # fmt: skip


def test_cli_phantom_writes_the_layout_and_refuses_non_empty_out(tmp_path, repo_root):
    out = tmp_path / "dyn"
    args = ["data", "phantom", "--kind", "dynamic", "--num-videos", "3", "--seed", "1", "--out", str(out),
            "--frames", "20"]  # fmt: skip
    done = _cli(*args, cwd=repo_root)
    assert done.returncode == 0, done.stderr
    assert len(list((out / "Videos").glob("*.avi"))) == 3 and (out / "VolumeTracings.csv").is_file()
    refused = _cli(*args[:-2], "--frames", "24", cwd=repo_root)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr and "Traceback" not in refused.stderr


def test_cli_phantom_all_reads_the_params_section(tmp_path, repo_root):
    small = "{num_videos: 4, num_frames: [20, 20]}"
    (tmp_path / "params.yaml").write_text(
        f"phantom:\n  seed: 3\n  dynamic: {small}\n  pediatric_a4c: {small}\n  pediatric_psax: {small}\n"
        "  cardiacnet: {num_videos: 4, num_frames: [20, 20], fps: [30.0], frame_size: [64, 80]}\n"
    )
    done = _cli("data", "phantom-all", "--out", str(tmp_path / "data"), "--params", str(tmp_path / "params.yaml"),
                cwd=repo_root)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for sub in ("EchoNet-Dynamic", "EchoNet-Pediatric/A4C", "EchoNet-Pediatric/PSAX", "CardiacNet"):
        assert (tmp_path / "data" / sub / "phantom.json").is_file()
