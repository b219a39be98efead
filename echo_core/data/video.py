"""Video IO with PyAV: probe, read, write (avi/mp4/gif), StyleGAN-V jpg trees, fps resampling, resizing.

Conventions (shared by every stage, so real and synthetic videos go through identical code):
- Arrays are uint8. Gray videos: frames (T, H, W); colour videos: frames (T, H, W, 3) RGB.
- "Gray" is the rounded mean of the R, G, B channels (what EchoNet-Synthetic's reference sets use), except
  for monochrome (4:0:0) H.264, whose Y plane *is* the picture: converting it through RGB would expand an
  unflagged full-range plane as if it were limited range (stack.md §3g: error ~9 grey levels).
- Writes are atomic and byte-deterministic for identical input, because written videos are DVC-tracked:
  container version strings are stripped, x264 runs single-threaded, and frame row padding is zeroed.
- Every failure to read is a VideoReadError naming the file, the cause and a fix; never a raw av traceback.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from echo_core.errors import DataError, VideoReadError
from echo_core.utils.atomic import atomic_dir, atomic_path

# suffix -> (container format, encoder, encoder pixel format or None for per-frame choice)
_WRITERS = {
    ".avi": ("avi", "mjpeg", "yuvj420p"),
    ".mp4": ("mp4", "libx264", "yuv420p"),
    ".gif": ("gif", "gif", None),
}
# Codec-native quantiser, lower is better: MJPEG q:v (2: near-lossless), libx264 CRF (18: visually lossless)
_DEFAULT_QUALITY = {".avi": 2, ".mp4": 18}
_QUALITY_RANGE = {".avi": (1, 31), ".mp4": (0, 51)}
_FIX_REDOWNLOAD = "re-export or re-download the file (`dvc checkout` / `dvc pull` if it is DVC-tracked)"


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    num_frames: int
    height: int
    width: int
    fps: float
    channels: int  # 1 for gray-coded streams (gray pix_fmt, 4:0:0 H.264), 3 otherwise (incl. gray content in YUV)


# ----------------------------------------------------------------------------------------------- reading


def probe_video(path: str | os.PathLike, *, count: bool = False) -> VideoInfo:
    """Frame count, size, fps and channels of the first video stream.

    The container's frame count is used when it agrees with its duration; otherwise (mkv/webm say 0,
    some writers lie) frames are counted by decoding. `count=True` always decodes, which also detects
    truncated files whose header is intact (as `read_video` would). Raises VideoReadError.
    """
    with _open(path) as (container, stream):
        fps = _stream_fps(stream, Path(path))
        num_frames = stream.frames
        if count or not _plausible_count(num_frames, container, stream, fps):
            num_frames = sum(1 for _ in _decode(container, stream, Path(path)))
        channels = 1 if _is_gray_stream(stream) else 3
        cc = stream.codec_context
        return VideoInfo(Path(path), int(num_frames), cc.height, cc.width, fps, channels)


def read_video(path: str | os.PathLike, *, gray: bool = True, size: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a whole video -> (frames, fps); frames (T, H, W) gray or (T, H, W, 3) RGB, uint8.

    `size` resizes every frame to size x size (see `resize_frames`).
    """
    with _open(path) as (container, stream):
        fps = _stream_fps(stream, Path(path))
        mono = _is_mono_h264(stream)
        frames = [_to_array(f, gray=gray, mono=mono) for f in _decode(container, stream, Path(path))]
    if not frames:
        raise VideoReadError(f"cannot read video {path}: it contains no decodable frame", fix=_FIX_REDOWNLOAD)
    video = np.stack(frames)
    return (resize_frames(video, size) if size is not None else video), fps


def iter_frames(path: str | os.PathLike, *, gray: bool = True) -> Iterator[np.ndarray]:
    """Yield frames one at a time ((H, W) gray or (H, W, 3) RGB uint8) without holding the video in memory."""
    with _open(path) as (container, stream):
        mono = _is_mono_h264(stream)
        for frame in _decode(container, stream, Path(path)):
            yield _to_array(frame, gray=gray, mono=mono)


@contextlib.contextmanager
def _open(
    path: str | os.PathLike,
) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    path = Path(path)
    if not path.exists():
        raise VideoReadError(f"cannot read video {path}: file not found", fix="check the path / FileName")
    if not path.is_file():
        raise VideoReadError(f"cannot read video {path}: not a regular file", fix="check the path / FileName")
    if path.stat().st_size == 0:
        raise VideoReadError(f"cannot read video {path}: file is empty (0 bytes)", fix=_FIX_REDOWNLOAD)
    try:
        container = av.open(str(path))
    except PermissionError:
        raise VideoReadError(
            f"cannot read video {path}: permission denied", fix="check the file's permissions"
        ) from None
    except (av.FFmpegError, OSError) as exc:
        raise VideoReadError(
            f"cannot read video {path}: not a video, an unsupported container, or truncated before its "
            f"index ({_cause(exc)})",
            fix=_FIX_REDOWNLOAD,
        ) from None
    with container:
        if not container.streams.video:
            raise VideoReadError(f"cannot read video {path}: the file has no video stream", fix=_FIX_REDOWNLOAD)
        yield container, container.streams.video[0]


def _decode(container, stream, path: Path) -> Iterator[av.VideoFrame]:
    """Decoded frames; a decoder error or a stream shorter than its header says is a VideoReadError."""
    index = 0
    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                yield frame
                index += 1
    except av.FFmpegError as exc:
        raise VideoReadError(
            f"cannot read video {path}: decode error at frame {index} ({_cause(exc)}); the file is corrupt "
            "or truncated",
            fix=_FIX_REDOWNLOAD,
        ) from None
    if stream.frames and index < stream.frames:
        raise VideoReadError(
            f"cannot read video {path}: truncated, decoded {index} of the {stream.frames} frames its header declares",
            fix=_FIX_REDOWNLOAD,
        )


def _cause(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _stream_fps(stream, path: Path) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise VideoReadError(f"cannot read video {path}: the stream declares no frame rate", fix=_FIX_REDOWNLOAD)
    return float(rate)


def _plausible_count(num_frames: int, container, stream, fps: float) -> bool:
    """Trust a header frame count only when it agrees with the header duration (within 5%, 2 frames)."""
    if num_frames <= 0:
        return False
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / av.time_base
    else:
        return True
    return abs(num_frames - seconds * fps) <= max(2.0, 0.05 * num_frames)


def _is_gray_stream(stream) -> bool:
    pix_fmt = stream.codec_context.pix_fmt or ""
    return pix_fmt.startswith("gray") or _is_mono_h264(stream)


def _to_array(frame: av.VideoFrame, *, gray: bool, mono: bool) -> np.ndarray:
    """frame -> (H, W) uint8 gray or (H, W, 3) uint8 RGB."""
    if frame.format.name.startswith("gray"):
        y = frame.to_ndarray(format="gray")
    elif mono:
        plane = frame.planes[0]  # Y plane, row stride may exceed the width
        y = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)[:, : frame.width].copy()
    else:
        rgb = frame.to_ndarray(format="rgb24")
        if not gray:
            return rgb
        # rounded channel mean, exactly: floor((r + g + b) / 3 + 1/2) == (r + g + b + 1) // 3
        return ((rgb.astype(np.uint16).sum(axis=-1) + 1) // 3).astype(np.uint8)
    return y if gray else np.repeat(y[..., None], 3, axis=-1)


def _is_mono_h264(stream) -> bool:
    """True for H.264 coded 4:0:0 (chroma_format_idc 0), read from the SPS in the stream's extradata."""
    cc = stream.codec_context
    if cc.name != "h264" or not cc.extradata:
        return False
    sps = _find_sps(bytes(cc.extradata))
    return sps is not None and _sps_chroma_format(sps) == 0


def _find_sps(extradata: bytes) -> bytes | None:
    if extradata[0] == 1 and len(extradata) > 8:  # avcC (mp4/mov): first SPS after a 2-byte length
        length = int.from_bytes(extradata[6:8], "big")
        return extradata[8 : 8 + length]
    start = extradata.find(b"\x00\x00\x01")  # Annex B: NAL unit type 7 is the SPS
    while 0 <= start < len(extradata) - 4:
        if extradata[start + 3] & 0x1F == 7:
            return extradata[start + 3 :]
        start = extradata.find(b"\x00\x00\x01", start + 3)
    return None


def _sps_chroma_format(sps: bytes) -> int:
    """chroma_format_idc from an SPS NAL unit (1 = 4:2:0 unless a high profile says otherwise)."""
    if len(sps) < 5 or sps[1] not in {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}:
        return 1
    bits = "".join(f"{b:08b}" for b in sps[4:12])
    pos = 0

    def read_ue() -> int:  # Exp-Golomb unsigned
        nonlocal pos
        zeros = bits.index("1", pos) - pos
        value = int(bits[pos + zeros : pos + 2 * zeros + 1], 2) - 1
        pos += 2 * zeros + 1
        return value

    try:
        read_ue()  # seq_parameter_set_id
        return read_ue()
    except ValueError:  # malformed SPS: let the decoder's own view (4:2:0) stand
        return 1


# ----------------------------------------------------------------------------------------------- writing


def write_video(
    path: str | os.PathLike, frames: np.ndarray, fps: float | Fraction, *, quality: int | None = None
) -> Path:
    """Write frames (T, H, W) gray or (T, H, W, 3) RGB uint8; the codec follows the suffix.

    - `.avi`: MJPEG (yuvj420p), `quality` = q:v, 2..31, default 2.
    - `.mp4`: H.264 libx264 yuv420p, `quality` = CRF 0..51, default 18; height and width must be even.
    - `.gif`: lossless for gray, 256-colour adaptive palette for RGB; `quality` unused. GIF stores frame
      delays in 1/100 s, so fps round-trips exactly only when 100/fps is an integer (10, 20, 25, 50).
    The stored frame rate is exactly `fps` (as a fraction: 30, 32, 50, 29.97 = 2997/100, 30000/1001).
    Atomic; identical input gives identical bytes.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _WRITERS:
        raise DataError(f"cannot write {path}: unsupported video suffix {suffix!r}", fix="use .avi, .mp4 or .gif")
    frames = _check_frames(frames, path)
    if suffix == ".mp4" and (frames.shape[1] % 2 or frames.shape[2] % 2):
        raise DataError(
            f"cannot write {path}: H.264 yuv420p needs even height and width, got {frames.shape[1:3]}",
            fix="resize to an even size (e.g. 112x112) or write .avi",
        )
    low, high = _QUALITY_RANGE.get(suffix, (None, None))
    if quality is not None and low is not None and not low <= quality <= high:
        raise ValueError(f"quality for {suffix} must be in [{low}, {high}] (lower is better), got {quality}")
    rate = _as_rate(fps)
    with atomic_path(path) as tmp:
        try:
            _encode(tmp, frames, rate, suffix, quality)
        except av.FFmpegError as exc:
            raise DataError(f"cannot write {path}: encoder error ({_cause(exc)})") from None
    return path


def _check_frames(frames: np.ndarray, path: Path) -> np.ndarray:
    frames = np.asarray(frames)
    gray_ok = frames.ndim == 3
    rgb_ok = frames.ndim == 4 and frames.shape[-1] == 3
    if frames.dtype != np.uint8 or not (gray_ok or rgb_ok) or frames.shape[0] == 0:
        raise ValueError(
            f"{path}: frames must be uint8 (T, H, W) or (T, H, W, 3) with T >= 1; got {frames.dtype} {frames.shape}"
        )
    return np.ascontiguousarray(frames)


def _as_rate(fps: float | Fraction) -> Fraction:
    """fps as an exact fraction; 1001 covers the NTSC rates (30000/1001) and two-decimal rates (2997/100)."""
    if isinstance(fps, bool) or not math.isfinite(float(fps)) or float(fps) <= 0:
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    return Fraction(fps).limit_denominator(1001)


def _encode(tmp: Path, frames: np.ndarray, rate: Fraction, suffix: str, quality: int | None) -> None:
    fmt, codec, pix_fmt = _WRITERS[suffix]
    if frames.ndim == 4 and _is_channel_gray(frames):
        frames = frames[..., 0]
    pix_fmt = pix_fmt or ("gray" if frames.ndim == 3 else "pal8")
    # bitexact: no "Lavf<version>" / encoder strings, so bytes do not depend on the FFmpeg build
    with av.open(str(tmp), "w", format=fmt, container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        _configure(stream, rate, suffix, quality)
        for index, array in enumerate(frames):
            frame = _to_frame(array, pix_fmt)
            frame.pts, frame.time_base = index, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _configure(stream, rate: Fraction, suffix: str, quality: int | None) -> None:
    cc = stream.codec_context
    cc.time_base = 1 / rate  # frame k has pts k: the stored rate is `rate` exactly
    cc.thread_count = 1  # x264 output depends on its thread count; fixing it makes bytes machine-independent
    options = {"flags": "+bitexact"}
    if suffix == ".mp4" and _has_avx512():
        # x264's AVX-512 kernels gave different bytes for identical frames (measured: 11 of 240 writes of noisy
        # 112x112 clips); capped at AVX2 they never did, and AVX2 output equals an AVX2-only machine's.
        options["x264-params"] = "asm=AVX2"
    if suffix == ".avi":
        # a fixed quantiser (PyAV never sets frame.quality, so global_quality + qscale would be ignored)
        q = str(quality if quality is not None else _DEFAULT_QUALITY[".avi"])
        options.update(qmin=q, qmax=q)
    elif suffix == ".mp4":
        options["crf"] = str(quality if quality is not None else _DEFAULT_QUALITY[".mp4"])
        cc.color_range, cc.colorspace = 1, 6  # flag what swscale produces: limited-range BT.601
    stream.options = options


@functools.cache
def _has_avx512() -> bool:
    """Whether this CPU has AVX-512 (then it has AVX2, FMA3 and BMI2 too: what x264's AVX2 level needs)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: x264 keeps its own choice
        return False
    return any(line.startswith("flags") and " avx512f" in line for line in cpuinfo.splitlines())


def _is_channel_gray(frames: np.ndarray) -> bool:
    return bool((frames[..., 0] == frames[..., 1]).all() and (frames[..., 0] == frames[..., 2]).all())


def _to_frame(array: np.ndarray, pix_fmt: str) -> av.VideoFrame:
    """(H, W) or (H, W, 3) uint8 -> a frame already in the encoder's pixel format, row padding zeroed."""
    if pix_fmt == "pal8":
        frame = _palette_frame(array)
    elif pix_fmt == "gray":
        frame = av.VideoFrame.from_ndarray(array, format="gray")
    else:
        rgb = np.repeat(array[..., None], 3, axis=-1) if array.ndim == 2 else array
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
    # swscale leaves the bytes between a row's end and the plane stride uninitialised, and the encoders'
    # SIMD reads pick them up: measured, ~1 write in 100 of identical input gave different x264 bytes.
    planes = frame.planes[:1] if pix_fmt == "pal8" else frame.planes
    for plane in planes:
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        rows[:, plane.width :] = 0
    return frame


def _palette_frame(array: np.ndarray) -> av.VideoFrame:
    # deterministic adaptive palette (no dithering: dithering noise would be baked into the "video")
    image = Image.fromarray(array).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    colours = np.frombuffer(bytes(image.getpalette()), np.uint8).reshape(-1, 3)[:256]
    rgba = np.zeros((256, 4), np.uint8)
    rgba[: len(colours), :3], rgba[:, 3] = colours, 255
    palette = np.empty_like(rgba)
    palette[:, _pal8_byte_order()] = rgba
    return av.VideoFrame.from_ndarray((np.asarray(image), palette), format="pal8")


@functools.cache
def _pal8_byte_order() -> np.ndarray:
    """Column of the pal8 palette array holding R, G, B, A (measured: PyAV's layout is not documented)."""
    probe = np.array([[1, 2, 3, 4]] + [[0, 0, 0, 0]] * 255, np.uint8)
    frame = av.VideoFrame.from_ndarray((np.zeros((2, 2), np.uint8), probe), format="pal8")
    return frame.to_ndarray(format="rgba")[0, 0].astype(np.int64) - 1


# -------------------------------------------------------------------------------------------- jpg trees


def write_jpg_tree(folder: str | os.PathLike, frames: np.ndarray, *, quality: int = 100) -> Path:
    """Write frames as folder/0000.jpg, 0001.jpg, ... (the StyleGAN-V reference/sample layout).

    frames: (T, H, W) gray, replicated to 3 channels, or (T, H, W, 3) RGB; uint8, T <= 10000. Atomic folder.
    """
    folder = Path(folder)
    frames = _check_frames(frames, folder)
    if len(frames) > 10_000:
        raise ValueError(f"{folder}: at most 10000 frames fit the %04d.jpg layout, got {len(frames)}")
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    with atomic_dir(folder) as tmp:
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp / f"{index:04d}.jpg", quality=quality)
    return folder


def read_jpg_tree(folder: str | os.PathLike, *, gray: bool = False) -> np.ndarray:
    """Read folder/*.jpg in lexicographic order -> (T, H, W, 3) RGB or (T, H, W) gray (channel mean) uint8."""
    folder = Path(folder)
    files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if not files:
        raise DataError(f"no .jpg frames in {folder}", fix="check the folder, or regenerate the jpg tree")
    frames = []
    for file in files:
        try:
            with Image.open(file) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except OSError as exc:
            raise DataError(f"cannot read frame {file}: {exc}", fix="regenerate the jpg tree") from None
    if len({f.shape for f in frames}) > 1:
        raise DataError(f"frames in {folder} differ in size", fix="regenerate the jpg tree")
    rgb = np.stack(frames)
    return ((rgb.astype(np.uint16).sum(axis=-1) + 1) // 3).astype(np.uint8) if gray else rgb


# ------------------------------------------------------------------------------------ resampling, resizing


def resample_indices(num_frames: int, src_fps: float, dst_fps: float, phase: float = 0.0) -> np.ndarray:
    """Source frame indices that resample a `num_frames` video from `src_fps` to `dst_fps`.

    Convention: destination frame k is shown at time t_k = (k + phase) / dst_fps and takes the source frame
    on screen at that time, floor(t_k * src_fps) (sample-and-hold, no interpolation). Every t_k inside the
    source duration num_frames / src_fps is returned, so indices are non-decreasing and in [0, num_frames).
    `phase` in [0, 1) shifts the grid by a fraction of a destination step (random temporal jitter).
    Same fps and phase 0 gives arange(num_frames).
    """
    if num_frames < 0 or src_fps <= 0 or dst_fps <= 0 or not 0.0 <= phase < 1.0:
        raise ValueError(
            f"need num_frames >= 0, fps > 0, 0 <= phase < 1; got {num_frames}, {src_fps}, {dst_fps}, {phase}"
        )
    ratio = float(src_fps) / float(dst_fps)
    eps = 1e-9  # absorbs float error so exact ratios (30->15) give exact indices
    count = max(0, math.ceil(num_frames / ratio - phase - eps))
    indices = np.floor((np.arange(count) + phase) * ratio + eps).astype(np.int64)
    return np.clip(indices, 0, max(num_frames - 1, 0))


def resize_frames(frames: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize (T, H, W) or (T, H, W, 3) uint8 frames to size x size (or (height, width)).

    Pillow bilinear with its antialiasing support widening, i.e. area-like when shrinking; deterministic.
    Frames already at the target size are returned unchanged.
    """
    height, width = (size, size) if isinstance(size, int) else size
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if frames.shape[1:3] == (height, width):
        return frames
    resized = [np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BILINEAR)) for f in frames]
    return np.stack(resized) if resized else np.empty((0, height, width, *frames.shape[3:]), np.uint8)
