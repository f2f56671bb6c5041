"""Video helpers for inspecting world-model rollouts: tiling clips into labelled grids,
writing them as MP4/GIF, and decoding MP4s back into arrays.

Predictions of a latent world model are easiest to judge side by side with the ground
truth ("ground truth" row, then "#1 E=0.123", "#2 E=0.150", ... sample rows), so
``make_grid`` builds one uint8 video out of many equally sized clips, and ``write_video``
persists it. The frame count of an MP4 is preserved exactly because evaluation tools
index frames by time step.

The optional dependencies (PyAV for MP4, Pillow for GIF and labels) are imported only
when a function needs them, so importing this module is always cheap and safe.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MissingDependencyError",
    "make_grid",
    "read_video_frames",
    "write_video",
]

# Stored in the MP4 "comment" tag when frames had to be padded to even sizes for
# yuv420p, so that read_video_frames can hand back exactly the size that was written.
_SIZE_TAG = "worldmodel:content_size="
_SIZE_TAG_RE = re.compile(re.escape(_SIZE_TAG) + r"(\d+)x(\d+)")

_LABEL_MARGIN = 4  # pixels left and right of the label text

# FFmpeg AVColorSpace / AVColorRange / AVColorPrimaries / AVColorTransferCharacteristic.
_AVCOL_SPC_BT709 = 1
_AVCOL_SPC_UNSPECIFIED = 2
_AVCOL_SPC_BT470BG = 5
_AVCOL_SPC_SMPTE170M = 6
_AVCOL_RANGE_MPEG = 1
_AVCOL_RANGE_JPEG = 2
_AVCOL_PRI_BT709 = 1
_AVCOL_TRC_BT709 = 1

# Luma weights (Kr, Kb) of the YUV matrices read_video_frames converts itself.
_YUV_MATRICES = {
    _AVCOL_SPC_UNSPECIFIED: (0.299, 0.114),  # FFmpeg's own default for SD content
    _AVCOL_SPC_BT470BG: (0.299, 0.114),
    _AVCOL_SPC_SMPTE170M: (0.299, 0.114),
    _AVCOL_SPC_BT709: (0.2126, 0.0722),
}


class MissingDependencyError(ImportError):
    """An optional package needed by the called function is not installed."""


def _import_av(purpose: str) -> Any:
    try:
        import av
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs PyAV, which is not installed: pip install av"
        ) from exc
    return av


def _import_pil(purpose: str) -> Any:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs Pillow, which is not installed: pip install pillow"
        ) from exc
    return Image, ImageDraw, ImageFont


def _describe(arr: Any) -> str:
    if isinstance(arr, np.ndarray):
        return f"array of shape {arr.shape} and dtype {arr.dtype}"
    return f"object of type {type(arr).__name__}"


def _check_video(video: Any, what: str) -> np.ndarray:
    if (
        not isinstance(video, np.ndarray)
        or video.dtype != np.uint8
        or video.ndim != 4
        or video.shape[-1] != 3
    ):
        raise ValueError(
            f"{what} must be a uint8 numpy array of shape (T, H, W, 3), got {_describe(video)}"
        )
    if 0 in video.shape:
        raise ValueError(f"{what} must have T, H, W >= 1, got shape {video.shape}")
    return video


# --------------------------------------------------------------------------- grid


def _as_row(row: Any, index: int) -> list[np.ndarray]:
    if isinstance(row, np.ndarray):
        return [_check_video(row, f"rows[{index}]")]
    if isinstance(row, Sequence) and not isinstance(row, (str, bytes)):
        return [_check_video(v, f"rows[{index}][{j}]") for j, v in enumerate(row)]
    raise ValueError(
        f"rows[{index}] must be a (T, H, W, 3) uint8 array or a list of them, "
        f"got {_describe(row)}"
    )


def _render_label_strip(
    labels: list[str], row_tops: list[int], row_height: int, height: int, pad_value: int
) -> np.ndarray:
    """One (height, width, 3) image holding every row's label, vertically centred."""
    Image, ImageDraw, ImageFont = _import_pil("make_grid(labels=...)")
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [measure.multiline_textbbox((0, 0), text, font=font) for text in labels]
    text_width = max((b[2] - b[0] for b in boxes), default=0)
    width = int(text_width) + 2 * _LABEL_MARGIN

    strip = Image.new("RGB", (width, height), (pad_value,) * 3)
    draw = ImageDraw.Draw(strip)
    # Dark text on light padding and vice versa, so labels stay readable for any pad_value.
    ink = (0, 0, 0) if pad_value >= 128 else (255, 255, 255)
    for text, box, top in zip(labels, boxes, row_tops):
        if not text:
            continue
        text_height = box[3] - box[1]
        # The bbox may start below/right of the anchor; subtract its offset to centre the ink.
        x = _LABEL_MARGIN - box[0]
        y = top + (row_height - text_height) / 2 - box[1]
        draw.multiline_text((x, y), text, fill=ink, font=font)
    return np.asarray(strip, dtype=np.uint8)


def make_grid(
    rows: list[np.ndarray | list[np.ndarray]],
    *,
    labels: list[str] | None = None,
    pad: int = 2,
    scale: int = 1,
    pad_value: int = 255,
) -> np.ndarray:
    """Tile equally sized videos into one video.

    Args:
        rows: one entry per grid row; each is a uint8 video (T, H, W, 3) or a list of such
            videos placed left to right. Rows may hold different numbers of videos; the
            missing cells are left blank (``pad_value``).
        labels: optional text per row, drawn in a strip left of the grid (Pillow's default
            font), e.g. ``"ground truth"`` or ``"#1 E=0.123"``.
        pad: blank pixels around and between cells (after scaling).
        scale: integer nearest-neighbour upscale applied to every cell.
        pad_value: grey level (0-255) of the padding and label background.

    Returns:
        uint8 array (T, H_total, W_total, 3) with
        ``H_total = n_rows * H * scale + (n_rows + 1) * pad`` and
        ``W_total = label_width + n_cols * W * scale + (n_cols + 1) * pad``
        (``label_width`` is 0 without labels). The label strip is a pure prefix along
        the width: the part right of it equals the unlabelled grid.

    Raises:
        ValueError: empty input, a cell that is not a uint8 (T, H, W, 3) array, cells of
            different T/H/W, a labels list whose length differs from rows, or bad
            pad/scale/pad_value.
    """
    if isinstance(rows, np.ndarray) or not isinstance(rows, Sequence) or len(rows) == 0:
        raise ValueError("make_grid needs a non-empty list of rows")
    if not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be an integer >= 0, got {pad!r}")
    if not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    if not 0 <= int(pad_value) <= 255:
        raise ValueError(f"pad_value must be in [0, 255], got {pad_value!r}")
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"got {len(labels)} labels for {len(rows)} rows")

    grid_rows = [_as_row(row, i) for i, row in enumerate(rows)]
    cells = [(r, c, v) for r, row in enumerate(grid_rows) for c, v in enumerate(row)]
    if not cells:
        raise ValueError("make_grid needs at least one video among the rows")

    sizes = {tuple(v.shape[:3]) for _, _, v in cells}
    if len(sizes) > 1:
        listing = ", ".join(
            f"[{r}][{c}]={v.shape[0]}x{v.shape[1]}x{v.shape[2]}" for r, c, v in cells
        )
        raise ValueError(
            f"all videos in a grid must share T, H, W (shown as TxHxW); got {listing}"
        )
    T, H, W = next(iter(sizes))

    cell_h, cell_w = H * scale, W * scale
    n_rows, n_cols = len(grid_rows), max(len(row) for row in grid_rows)
    height = n_rows * cell_h + (n_rows + 1) * pad
    width = n_cols * cell_w + (n_cols + 1) * pad
    out = np.full((T, height, width, 3), pad_value, dtype=np.uint8)
    row_tops = [pad + r * (cell_h + pad) for r in range(n_rows)]
    for r, c, video in cells:
        if scale > 1:
            video = video.repeat(scale, axis=1).repeat(scale, axis=2)
        y, x = row_tops[r], pad + c * (cell_w + pad)
        out[:, y : y + cell_h, x : x + cell_w] = video

    if labels is not None:
        texts = [str(text) for text in labels]
        strip = _render_label_strip(texts, row_tops, cell_h, height, int(pad_value))
        strip_video = np.broadcast_to(strip, (T, *strip.shape))
        out = np.concatenate([strip_video, out], axis=2)
    return out


# --------------------------------------------------------------------------- writing


def _pick_codec(av: Any) -> str:
    """H.264 when this FFmpeg build has libx264 (smaller, plays everywhere), else MPEG-4 part 2."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _write_mp4(frames: np.ndarray, path: Path, fps: Fraction) -> None:
    av = _import_av("write_video(.mp4)")
    _, H, W, _ = frames.shape
    # yuv420p subsamples chroma 2x2, so encoders require even sizes; replicate the edge
    # rather than padding with black so the padding does not bleed colour into the content.
    pad_h, pad_w = H % 2, W % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")

    codec = _pick_codec(av)
    if codec == "libx264":
        options = {"crf": "17", "preset": "medium"}
    else:
        options = {}
    # faststart puts the index first so browsers (e.g. the MLflow UI) can play the file
    # before it is fully downloaded.
    container = av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"})
    try:
        if pad_h or pad_w:
            container.metadata["comment"] = f"{_SIZE_TAG}{W}x{H}"
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = W + pad_w, H + pad_h
        stream.pix_fmt = "yuv420p"
        # Tag what the RGB->YUV conversion actually does (BT.601 matrix, limited range) so
        # players and read_video_frames do not have to guess; untagged small videos are
        # read as BT.601 by most but not all players. Values are FFmpeg's AVColor* enums.
        cc = stream.codec_context
        cc.colorspace = _AVCOL_SPC_SMPTE170M
        cc.color_range = _AVCOL_RANGE_MPEG
        cc.color_primaries = _AVCOL_PRI_BT709
        cc.color_trc = _AVCOL_TRC_BT709
        if codec != "libx264":
            # MPEG-4 part 2 has no CRF; a generous bit budget (~4 bits/pixel) keeps
            # small 64x64 frames close to lossless.
            stream.bit_rate = max(2_000_000, int(4 * (W + pad_w) * (H + pad_h) * float(fps)))
        time_base = 1 / fps
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        # Drain delayed frames (B-frames/lookahead); skipping this would drop the tail.
        for packet in stream.encode(None):
            container.mux(packet)
    finally:
        container.close()


def _write_gif(frames: np.ndarray, path: Path, fps: Fraction) -> None:
    Image, _, _ = _import_pil("write_video(.gif)")
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    # GIF stores delays in 1/100 s; Pillow takes milliseconds and rounds down to 10 ms.
    duration_ms = max(10, round(1000 / float(fps)))
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        loop=0,
        duration=duration_ms,
        optimize=False,
    )


_WRITERS = {".mp4": _write_mp4, ".gif": _write_gif}


def write_video(frames: np.ndarray, path: str | Path, fps: int = 8) -> Path:
    """Write a uint8 video (T, H, W, 3) to ``path``; the format follows the suffix.

    ``.mp4``: PyAV, H.264 (``libx264``) when available else ``mpeg4``, yuv420p. Odd
    heights/widths are edge-padded to even sizes (the true size is recorded in the
    container's comment tag, which :func:`read_video_frames` uses to crop back). The
    frame count is preserved exactly.

    ``.gif``: Pillow, loops forever, one frame every ``1000 / fps`` ms (GIF resolution is
    10 ms). Note that Pillow merges *identical consecutive* frames into one longer frame;
    playback timing is unchanged but the stored frame count can then be lower than T.

    The file is written to a temporary name in the target directory and moved into place
    with ``os.replace``, so readers never see a half-written video. Parent directories
    are created.

    Returns:
        The path written to, as a ``Path``.

    Raises:
        ValueError: frames not a uint8 (T, H, W, 3) array, fps <= 0, or a suffix other
            than ``.mp4``/``.gif``.
        MissingDependencyError: PyAV (mp4) or Pillow (gif) is not installed.
    """
    frames = _check_video(frames, "frames")
    path = Path(path)
    suffix = path.suffix.lower()
    writer = _WRITERS.get(suffix)
    if writer is None:
        raise ValueError(
            f"unsupported video suffix {path.suffix!r} for {path}; use one of "
            f"{', '.join(sorted(_WRITERS))}"
        )
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")
    rate = Fraction(fps).limit_denominator(1001)

    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory so os.replace is an atomic rename on one filesystem; the suffix is kept
    # so that any tool guessing the format from the name still works.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        writer(frames, tmp, rate)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------- reading


def _upsample_chroma(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """2x bilinear upsampling of a 4:2:0 chroma plane (centred siting), cropped to (H, W).

    Nearest-neighbour upsampling roughly doubles the round-trip error on smooth content.
    """
    p = np.pad(plane, 1, mode="edge")
    centre = 9 * p[1:-1, 1:-1]
    up, down = p[:-2, 1:-1], p[2:, 1:-1]
    left, right = p[1:-1, :-2], p[1:-1, 2:]
    out = np.empty((2 * plane.shape[0], 2 * plane.shape[1]), dtype=np.float32)
    out[0::2, 0::2] = centre + 3 * up + 3 * left + p[:-2, :-2]
    out[0::2, 1::2] = centre + 3 * up + 3 * right + p[:-2, 2:]
    out[1::2, 0::2] = centre + 3 * down + 3 * left + p[2:, :-2]
    out[1::2, 1::2] = centre + 3 * down + 3 * right + p[2:, 2:]
    return out[:height, :width] / 16


def _frame_to_rgb(frame: Any) -> np.ndarray:
    """Decoded frame -> (H, W, 3) uint8 RGB.

    Common 4:2:0 frames are converted here in float because swscale's fast YUV->RGB
    path is biased by about -2 levels per channel; anything else goes through swscale.
    """
    fmt = frame.format.name
    matrix = _YUV_MATRICES.get(int(frame.colorspace))
    if fmt not in ("yuv420p", "yuvj420p") or matrix is None:
        return frame.to_ndarray(format="rgb24")

    height, width = frame.height, frame.width
    y, u, v = (
        np.frombuffer(plane, dtype=np.uint8)
        .reshape(plane.height, plane.line_size)[:, : plane.width]
        .astype(np.float32)
        for plane in frame.planes
    )
    u = _upsample_chroma(u, height, width) - 128
    v = _upsample_chroma(v, height, width) - 128
    if fmt == "yuvj420p" or int(frame.color_range) == _AVCOL_RANGE_JPEG:
        luma = y
    else:
        luma = (y - 16) * (255 / 219)
        u *= 255 / 224
        v *= 255 / 224
    kr, kb = matrix
    kg = 1 - kr - kb
    rgb = np.empty((height, width, 3), dtype=np.float32)
    rgb[..., 0] = luma + 2 * (1 - kr) * v
    rgb[..., 1] = luma - (2 * kb * (1 - kb) / kg) * u - (2 * kr * (1 - kr) / kg) * v
    rgb[..., 2] = luma + 2 * (1 - kb) * u
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def read_video_frames(path: str | Path) -> np.ndarray:
    """Decode every frame of a video file (anything FFmpeg reads) with PyAV.

    Returns:
        uint8 array (T, H, W, 3), RGB. For MP4s written by :func:`write_video` from
        odd-sized frames, the even-size padding is cropped off again.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file has no video stream or no decodable frames.
        MissingDependencyError: PyAV is not installed.
    """
    av = _import_av("read_video_frames")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such video file: {path}")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = [_frame_to_rgb(frame) for frame in container.decode(stream)]
        comment = str(container.metadata.get("comment", ""))
    if not frames:
        raise ValueError(f"{path} contains no decodable video frames")
    video = np.stack(frames)

    match = _SIZE_TAG_RE.search(comment)
    if match:
        width, height = int(match.group(1)), int(match.group(2))
        if width <= video.shape[2] and height <= video.shape[1]:
            video = video[:, :height, :width]
    return np.ascontiguousarray(video)
