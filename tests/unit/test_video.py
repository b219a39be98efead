"""echo_core.data.video on real files written and decoded by PyAV (tiny clips: 12 frames of 112x112)."""

from __future__ import annotations

import hashlib
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from echo_core.data.video import (
    VideoInfo,
    iter_frames,
    probe_video,
    read_jpg_tree,
    read_video,
    resample_indices,
    resize_frames,
    write_jpg_tree,
    write_video,
)
from echo_core.errors import DataError, VideoReadError

T, H, W = 12, 112, 112


@pytest.fixture(scope="module")
def gray_clip() -> np.ndarray:
    """(T, H, W) smooth moving pattern: what codecs are built for, so errors measure the IO, not the test."""
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([128 + 100 * np.sin(xx / 9 + t / 3) * np.cos(yy / 13) for t in range(T)]).astype(np.uint8)


@pytest.fixture(scope="module")
def rgb_clip(gray_clip) -> np.ndarray:
    """(T, H, W, 3) with three different channels."""
    return np.stack([gray_clip, 255 - gray_clip, gray_clip // 2 + 60], axis=-1)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


# -------------------------------------------------------------------------------------------- round trips

# (suffix, fps that the container can store exactly, max mean abs error gray, rgb)
ROUND_TRIPS = [(".avi", 30, 1.5, 5.0), (".mp4", 30, 2.0, 5.0), (".gif", 25, 0.0, 1.0)]


@pytest.mark.parametrize(("suffix", "fps", "max_gray", "max_rgb"), ROUND_TRIPS)
def test_round_trip_gray(tmp_path, gray_clip, suffix, fps, max_gray, max_rgb):
    path = write_video(tmp_path / f"clip{suffix}", gray_clip, fps)
    frames, read_fps = read_video(path)
    assert frames.shape == gray_clip.shape and frames.dtype == np.uint8
    assert read_fps == fps
    assert _mae(frames, gray_clip) <= max_gray
    info = probe_video(path)
    assert info == VideoInfo(path, T, H, W, float(fps), info.channels)


@pytest.mark.parametrize(("suffix", "fps", "max_gray", "max_rgb"), ROUND_TRIPS)
def test_round_trip_rgb(tmp_path, rgb_clip, suffix, fps, max_gray, max_rgb):
    path = write_video(tmp_path / f"clip{suffix}", rgb_clip, fps)
    frames, read_fps = read_video(path, gray=False)
    assert frames.shape == rgb_clip.shape
    assert read_fps == fps
    assert _mae(frames, rgb_clip) <= max_rgb
    assert probe_video(path).channels == 3


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
@pytest.mark.parametrize("fps", [30, 32, 50, 29.97, Fraction(30000, 1001)])
def test_fps_is_stored_exactly(tmp_path, gray_clip, suffix, fps):
    path = write_video(tmp_path / f"clip{suffix}", gray_clip[:8], fps)
    assert probe_video(path).fps == float(fps)
    assert read_video(path)[1] == float(fps)


def test_mixed_fps_videos_resample_to_a_common_rate(tmp_path, gray_clip):
    clips = {fps: write_video(tmp_path / f"v{fps}.avi", gray_clip, fps) for fps in (30, 50)}
    for fps, path in clips.items():
        frames, src_fps = read_video(path)
        assert src_fps == fps
        index = resample_indices(len(frames), src_fps, 32)
        # the resampled clip lasts as long as the source: ceil(T * 32 / fps) frames
        assert len(index) == int(np.ceil(T * 32 / fps))
        assert frames[index].shape[1:] == (H, W)


def test_three_channel_avi_reads_as_channel_mean(tmp_path, rgb_clip):
    path = write_video(tmp_path / "colour.avi", rgb_clip, 30)
    rgb, _ = read_video(path, gray=False)
    gray, _ = read_video(path, gray=True)
    expected = np.rint(rgb.astype(np.float64).mean(axis=-1)).astype(np.uint8)
    assert gray.shape == (T, H, W)
    assert np.array_equal(gray, expected)


def test_gray_encoded_h264_reads_the_y_plane(tmp_path, gray_clip):
    # libx264 with pix_fmt=gray (4:0:0) decodes as yuv420p with an unflagged full-range Y plane;
    # converting it through RGB is off by ~9 grey levels (stack.md §3g).
    path = tmp_path / "mono.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = W, H, "gray"
        for index, frame in enumerate(gray_clip):
            video_frame = av.VideoFrame.from_ndarray(frame, format="gray")
            video_frame.pts = index
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))
    frames, _ = read_video(path)
    assert _mae(frames, gray_clip) < 2.0
    assert probe_video(path).channels == 1
    rgb, _ = read_video(path, gray=False)
    assert np.array_equal(rgb[..., 0], frames) and np.array_equal(rgb[..., 2], frames)


def test_probe_counts_by_decoding_when_the_container_does_not_say(tmp_path, gray_clip):
    path = tmp_path / "lossless.mkv"  # mkv stores no frame count (stream.frames == 0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "gray"
        for index, frame in enumerate(gray_clip):
            video_frame = av.VideoFrame.from_ndarray(frame, format="gray")
            video_frame.pts = index
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))
    info = probe_video(path)
    assert (info.num_frames, info.fps, info.channels) == (T, 25.0, 1)
    assert np.array_equal(read_video(path)[0], gray_clip)  # ffv1 is lossless


def test_iter_frames_matches_read_video_and_size_resizes(tmp_path, gray_clip):
    path = write_video(tmp_path / "clip.mp4", gray_clip, 30)
    frames, _ = read_video(path)
    assert np.array_equal(np.stack(list(iter_frames(path))), frames)
    small, _ = read_video(path, size=64)
    assert small.shape == (T, 64, 64)
    assert np.array_equal(small, resize_frames(frames, 64))


# ------------------------------------------------------------------------------- determinism, atomicity


@pytest.mark.parametrize("suffix", [".avi", ".mp4", ".gif"])
@pytest.mark.parametrize("colour", [False, True])
def test_identical_input_gives_identical_bytes(tmp_path, gray_clip, rgb_clip, suffix, colour):
    clip = rgb_clip if colour else gray_clip
    first = write_video(tmp_path / f"a{suffix}", clip, 25)
    second = write_video(tmp_path / f"b{suffix}", clip, 25)
    assert _sha(first) == _sha(second)
    assert b"Lavf" not in first.read_bytes()  # no FFmpeg version string: bytes survive library upgrades


def test_quality_trades_size_for_error(tmp_path, gray_clip):
    fine = write_video(tmp_path / "fine.mp4", gray_clip, 30, quality=10)
    coarse = write_video(tmp_path / "coarse.mp4", gray_clip, 30, quality=40)
    assert coarse.stat().st_size < fine.stat().st_size
    assert _mae(read_video(fine)[0], gray_clip) < _mae(read_video(coarse)[0], gray_clip)
    low_q = write_video(tmp_path / "low.avi", gray_clip, 30, quality=20)
    assert _mae(read_video(low_q)[0], gray_clip) > _mae(
        read_video(write_video(tmp_path / "hi.avi", gray_clip, 30))[0], gray_clip
    )


def test_repeated_mp4_writes_never_vary(tmp_path, rgb_clip):
    # Uninitialised row padding used to change x264 output in ~1 write of 100; 60 writes catch a relapse
    # with probability ~0.45 per run, so a flaky failure here is a real bug, not noise.
    hashes = {_sha(write_video(tmp_path / "clip.mp4", rgb_clip[:6], 30)) for _ in range(60)}
    assert len(hashes) == 1


def test_write_is_atomic_and_overwrites(tmp_path, gray_clip):
    path = tmp_path / "clip.avi"
    write_video(path, gray_clip, 30)
    write_video(path, gray_clip[:5], 30)
    assert probe_video(path).num_frames == 5
    assert [p.name for p in tmp_path.iterdir()] == ["clip.avi"]  # no temp file left behind


def test_write_rejects_odd_mp4_sizes_and_unknown_suffixes(tmp_path, gray_clip):
    with pytest.raises(DataError, match="even height and width"):
        write_video(tmp_path / "odd.mp4", gray_clip[:, :111, :111], 30)
    with pytest.raises(DataError, match="unsupported video suffix '.mov'"):
        write_video(tmp_path / "clip.mov", gray_clip, 30)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "clip.avi", gray_clip.astype(np.float32), 30)
    with pytest.raises(ValueError, match="quality"):
        write_video(tmp_path / "clip.mp4", gray_clip, 30, quality=99)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ errors


@pytest.fixture
def real_avi(tmp_path, gray_clip) -> Path:
    return write_video(tmp_path / "real.avi", gray_clip, 30)


def _read_error(path: Path) -> str:
    with pytest.raises(VideoReadError) as info:
        read_video(path)
    message = str(info.value)
    assert str(path) in message and "fix:" in message
    with pytest.raises(VideoReadError):
        probe_video(path)
    return message


def test_error_missing_file(tmp_path):
    assert "file not found" in _read_error(tmp_path / "nope.avi")


def test_error_zero_bytes(tmp_path):
    path = tmp_path / "empty.avi"
    path.touch()
    assert "empty (0 bytes)" in _read_error(path)


def test_error_truncated_avi(tmp_path, real_avi):
    path = tmp_path / "half.avi"
    data = real_avi.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = _read_error(path)
    # the cut lands either inside a JPEG packet (decoder error) or between packets (short stream)
    assert "truncated" in message
    assert re.search(rf"decode error at frame \d+|decoded \d+ of the {T} frames", message)


def test_error_random_bytes(tmp_path):
    path = tmp_path / "noise.avi"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert "not a video" in _read_error(path)


def test_error_no_video_stream(tmp_path):
    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert "no video stream" in _read_error(path)


# --------------------------------------------------------------------------------------------- jpg trees


def test_jpg_tree_layout_and_round_trip(tmp_path, gray_clip):
    folder = write_jpg_tree(tmp_path / "video_0", gray_clip)
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"{i:04d}.jpg" for i in range(T)]
    with Image.open(folder / "0000.jpg") as image:
        assert image.mode == "RGB" and image.size == (W, H)
    rgb = read_jpg_tree(folder)
    assert rgb.shape == (T, H, W, 3)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    assert _mae(read_jpg_tree(folder, gray=True), gray_clip) < 1.0


def test_jpg_tree_rewrite_is_atomic_and_missing_tree_errors(tmp_path, gray_clip, rgb_clip):
    folder = tmp_path / "video_0"
    write_jpg_tree(folder, gray_clip)
    write_jpg_tree(folder, rgb_clip[:3])
    assert sorted(p.name for p in folder.iterdir()) == ["0000.jpg", "0001.jpg", "0002.jpg"]
    assert [p.name for p in tmp_path.iterdir()] == ["video_0"]
    assert _mae(read_jpg_tree(folder), rgb_clip[:3]) < 3.0
    with pytest.raises(DataError, match="no .jpg frames"):
        read_jpg_tree(tmp_path / "absent")


# ------------------------------------------------------------------------------- resampling and resizing


def test_resample_same_rate_is_identity_and_simple_ratios():
    assert np.array_equal(resample_indices(10, 30, 30), np.arange(10))
    assert np.array_equal(resample_indices(10, 50, 25), np.arange(0, 10, 2))
    assert np.array_equal(resample_indices(4, 30, 60), [0, 0, 1, 1, 2, 2, 3, 3])
    assert np.array_equal(resample_indices(10, 30, 30, phase=0.5), np.arange(10))
    assert resample_indices(0, 30, 32).size == 0


@pytest.mark.parametrize("src_fps", [25, 29.97, 30, 50, 60.0, 100 / 3])
@pytest.mark.parametrize("dst_fps", [8, 16, 32, 50])
@pytest.mark.parametrize("phase", [0.0, 0.37, 0.999])
def test_resample_properties(src_fps, dst_fps, phase):
    num = 97
    index = resample_indices(num, src_fps, dst_fps, phase)
    assert index.dtype == np.int64
    assert index.min() >= 0 and index.max() < num
    assert np.all(np.diff(index) >= 0)
    # as many destination frames as fit in the source duration (t_k = (k + phase) / dst < num / src)
    assert len(index) == int(np.ceil(num * dst_fps / src_fps - phase - 1e-9))
    # each index is the source frame on screen at t_k
    times = (np.arange(len(index)) + phase) / dst_fps
    assert np.all(np.abs(times * src_fps - index) < 1 + 1e-6)


def test_resample_rejects_bad_arguments():
    for args in [(10, 0, 30), (10, 30, -1), (-1, 30, 30)]:
        with pytest.raises(ValueError):
            resample_indices(*args)
    with pytest.raises(ValueError, match="phase"):
        resample_indices(10, 30, 30, phase=1.0)


def test_resize_frames(gray_clip, rgb_clip):
    assert resize_frames(gray_clip, 112) is gray_clip
    assert resize_frames(gray_clip, 64).shape == (T, 64, 64)
    assert resize_frames(rgb_clip, (56, 28)).shape == (T, 56, 28, 3)
    flat = np.full((2, 100, 80), 77, np.uint8)
    assert np.all(resize_frames(flat, 112) == 77)
    assert np.array_equal(resize_frames(gray_clip, 64), resize_frames(gray_clip, 64))
