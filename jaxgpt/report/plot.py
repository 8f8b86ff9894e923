"""Line charts written straight to PNG, with numpy and the standard library only.

This module owns `plot_lines`, which draws loss curves (or any x/y series) into an RGB canvas: frame,
grid, "nice" ticks with compact labels (250k, 1.2M), title, axis labels and a legend, rendered with a
small embedded 5x7 bitmap font. It also owns the PNG encoding (zlib + struct) and the atomic write. It
exists so that the project can chart training runs without depending on matplotlib.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence

import numpy as np

from jaxgpt.files import write_atomic

# Distinct, colour-blind-friendly line colours (matplotlib's "tab10"); series beyond ten reuse them.
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
          (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
BLACK, WHITE, GRID, GREY = (0, 0, 0), (255, 255, 255), (225, 225, 225), (150, 150, 150)

# 5x7 font: each glyph is 7 base-32 digits, one per row, whose 5 bits are the pixels left to right.
# Stored this way (not as a PNG or a list of lists) to keep the whole font in a dozen source lines.
_FONT_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz .,-+/():%_=?"
_FONT_ROWS = (
    "ehjlphe 4c4444e eh1248v v2421he 26aiv22 vgu11he 68guhhe v124888 ehhehhe ehhf12c ehhvhhh uhhuhhu "
    "ehggghe sihhhis vgguggv vgguggg ehgnhhf hhhvhhh e44444e 72222ic hikokih ggggggv hrllhhh hhpljhh "
    "ehhhhhe uhhuggg ehhhlid uhhukih fgge11u v444444 hhhhhhe hhhhha4 hhhllla hha4ahh hha4444 v1248gv "
    "00e1fhf ggmphhu 00egghe 11djhhf 00ehvge 698s888 00fhf1e ggmphhh 40c444e 20622ic ggikoki c44444e "
    "00qllhh 00mphhh 00ehhhe 00uhugg 00fhf11 00mpggg 00ege1u 88s8896 00hhhjd 00hhha4 00hhlla 00ha4ah "
    "00hhf1e 00v248v 0000000 00000cc 0000c48 000v000 044v440 01248g0 2488842 8422248 0cc0cc0 op248j3 "
    "000000v 00v0v00 eh12404").split()
_GLYPHS = {c: np.array([[(int(d, 32) >> (4 - i)) & 1 for i in range(5)] for d in rows], dtype=bool)
           for c, rows in zip(_FONT_CHARS, _FONT_ROWS, strict=True)}
SCALE = 2  # 5x7 pixels is too small to read on a modern screen; doubled it is 10x14
CHAR_W, CHAR_H = 6 * SCALE, 7 * SCALE  # advance includes one blank column between glyphs


def text_width(s: str) -> int:
    """Width in pixels of `s` as drawn by `_text` (no trailing gap)."""
    return max(len(s) * CHAR_W - SCALE, 0)


def _text(img: np.ndarray, x: int, y: int, s: str, color=BLACK) -> None:
    """Draw `s` with its top-left corner at (x, y); pixels outside the image are dropped."""
    h, w, _ = img.shape
    for i, ch in enumerate(s):
        glyph = _GLYPHS.get(ch, _GLYPHS["?"]).repeat(SCALE, 0).repeat(SCALE, 1)
        gy, gx = np.nonzero(glyph)
        px, py = gx + x + i * CHAR_W, gy + y
        keep = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        img[py[keep], px[keep]] = color


def _rect(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, color, fill: bool = True) -> None:
    """Fill (or outline, 1 px) the rectangle with inclusive corners (x0, y0) and (x1, y1)."""
    if fill:
        img[y0:y1 + 1, x0:x1 + 1] = color
    else:
        img[y0, x0:x1 + 1] = img[y1, x0:x1 + 1] = color
        img[y0:y1 + 1, x0] = img[y0:y1 + 1, x1] = color


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values (steps of 1, 2, 2.5 or 5 x 10^k) spanning [lo, hi]."""
    mag = 10.0 ** math.floor(math.log10((hi - lo) / max(n - 1, 1)))
    best = None
    for step in (m * mag for m in (1, 2, 2.5, 5, 10, 20)):
        first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
        # Closest to n ticks wins; on a tie the smaller step, whose ticks hug the data more tightly.
        if best is None or abs(last - first + 1 - n) < best[0]:
            best = (abs(last - first + 1 - n), step, first, last)
    _, step, first, last = best
    # Rounding to 12 significant digits removes float noise such as 0.30000000000000004.
    return [float(f"{k * step:.12g}") for k in range(first, last + 1)]


def format_tick(v: float, step: float) -> str:
    """Compact label for tick `v` on an axis with tick spacing `step`: 250k, 1.2M, 3B, 1.5, 2.0, 2e-05."""
    # A unit needs ticks that differ within its first few digits; 1000..1010 reads better without one.
    units = ((1e9, "B"), (1e6, "M"), (1e3, "k"))
    unit, suffix = next(((u, s) for u, s in units if abs(v) >= u and step >= u / 100), (1.0, ""))
    if not suffix and 0 < abs(v) < 1e-3:  # learning rates and the like: fixed decimals would be unreadable
        return f"{v:.3g}"
    # Enough decimals to tell neighbouring ticks apart, the same count on every tick (1.5, 2.0).
    rel = step / unit
    decimals = max(0, -math.floor(math.log10(rel) + 1e-9))
    if round(rel * 10 ** decimals, 6) % 1:
        decimals += 1  # steps like 0.25 need one more digit than their magnitude says
    text = f"{v / unit:.{min(decimals, 12)}f}"
    # With a unit suffix, trailing zeros only add clutter: 1M, 1.5M rather than 1.0M, 1.5M.
    return text.rstrip("0").rstrip(".") + suffix if suffix and "." in text else text + suffix


def _range(values: list[np.ndarray]) -> tuple[float, float]:
    """Min and max over all finite values, widened when they are equal so the axis has a span."""
    if not any(v.size for v in values):
        return 0.0, 1.0
    lo = min(float(v.min()) for v in values if v.size)
    hi = max(float(v.max()) for v in values if v.size)
    pad = abs(lo) * 0.1 or 1.0  # used only for a flat range: 10% of the value, or 1 around zero
    return (lo - pad, hi + pad) if hi - lo <= 1e-12 * max(abs(lo), abs(hi), 1.0) else (lo, hi)


def _polyline(img, xs, ys, color, box) -> None:
    """Draw a 2 px line through pixel points (xs, ys), or a dot if there is one point, clipped to box."""
    x0, y0, x1, y1 = box
    if len(xs) == 1:  # a lone point has no segment; a 5x5 dot keeps it visible
        px, py = np.meshgrid(xs[0] + np.arange(-2, 3), ys[0] + np.arange(-2, 3))
    else:
        # DDA on all segments at once: each is sampled once per pixel along its longer axis.
        dx, dy = np.diff(xs), np.diff(ys)
        steps = np.maximum(np.abs(dx), np.abs(dy)).astype(int) + 1
        seg = np.repeat(np.arange(len(dx)), steps)
        offset = np.arange(steps.sum()) - np.repeat(np.cumsum(steps) - steps, steps)
        t = offset / np.maximum(steps - 1, 1)[seg]
        px, py = np.rint(xs[seg] + t * dx[seg]), np.rint(ys[seg] + t * dy[seg])
        # Stamping each sample at 2x2 offsets makes the line 2 px thick in every direction.
        px = np.concatenate([px, px + 1, px, px + 1])
        py = np.concatenate([py, py, py + 1, py + 1])
    px, py = px.astype(int).ravel(), py.astype(int).ravel()
    keep = (px >= x0) & (px <= x1) & (py >= y0) & (py <= y1)
    img[py[keep], px[keep]] = color


def plot_lines(path, series: dict[str, tuple[Sequence[float], Sequence[float]]], *, title: str = "",
               xlabel: str = "", ylabel: str = "", width: int = 800, height: int = 500) -> None:
    """Draw each named (xs, ys) series as a coloured line and write the chart to `path` as a PNG.

    Non-finite points are skipped, empty series are left out (their colour is not reused, so colours
    stay tied to positions in `series`), and a series with one point is drawn as a dot. The file is
    replaced atomically.
    """
    if width < 200 or height < 150:
        raise ValueError(f"plot size {width}x{height} is too small; use at least 200x150")
    clean = {}
    for name, (xs, ys) in series.items():
        x, y = np.asarray(xs, dtype=float).ravel(), np.asarray(ys, dtype=float).ravel()
        if x.shape != y.shape:
            raise ValueError(f"series {name!r} has {x.size} x values but {y.size} y values")
        ok = np.isfinite(x) & np.isfinite(y)
        clean[name] = (x[ok], y[ok])
    yt = nice_ticks(*_range([y for _, y in clean.values()]))
    ylab = [format_tick(v, yt[1] - yt[0]) for v in yt]

    # Margins are sized from the text that has to fit in them, so long tick labels never overlap.
    pad = 10
    left = pad + max(text_width(s) for s in ylab) + 8
    top = pad + (CHAR_H + pad if title else 0) + (CHAR_H + pad if ylabel else 0) + 4
    bottom = height - 1 - (pad + CHAR_H + 8 + (CHAR_H + pad if xlabel else 0))
    for n in (5, 4, 3, 2):  # fewer x ticks on narrow charts, so that their labels never touch
        xt = nice_ticks(*_range([x for x, _ in clean.values()]), n)
        xlab = [format_tick(v, xt[1] - xt[0]) for v in xt]
        right = width - 1 - max(pad * 2, text_width(xlab[-1]) // 2 + pad)
        if (right - left) / (len(xt) - 1) >= max(map(text_width, xlab)) + 2 * CHAR_W:
            break
    if right - left < 50 or bottom - top < 50:
        raise ValueError(f"plot size {width}x{height} leaves no room for the axes; make it larger")
    box = (left, top, right, bottom)  # lines may cover the frame, so data on a boundary stays visible

    img = np.full((height, width, 3), 255, dtype=np.uint8)
    sx, sy = (right - left) / (xt[-1] - xt[0]), (bottom - top) / (yt[-1] - yt[0])

    def to_px(x, y):
        return left + (np.asarray(x) - xt[0]) * sx, bottom - (np.asarray(y) - yt[0]) * sy

    # Grid and ticks first, so that data lines and the frame are drawn over them.
    for v, s in zip(xt, xlab):
        px = int(round(float(to_px(v, 0)[0])))
        _rect(img, px, top, px, bottom, GRID)
        _rect(img, px, bottom, px, bottom + 5, BLACK)
        _text(img, min(max(px - text_width(s) // 2, 0), width - text_width(s)), bottom + 8, s)
    for v, s in zip(yt, ylab):
        py = int(round(float(to_px(0, v)[1])))
        _rect(img, left, py, right, py, GRID)
        _rect(img, left - 5, py, left, py, BLACK)
        _text(img, left - 8 - text_width(s), py - CHAR_H // 2, s)
    _rect(img, left, top, right, bottom, BLACK, fill=False)

    entries = []
    for i, (name, (x, y)) in enumerate(clean.items()):
        if x.size:
            entries.append((name, COLORS[i % len(COLORS)]))
            _polyline(img, *to_px(x, y), entries[-1][1], box)

    if title:  # centred over the whole image; a title wider than the image starts at its left edge
        _text(img, max((width - text_width(title)) // 2, 0), pad, title)
    if ylabel:  # written horizontally above the y axis: vertical bitmap text is hard to read
        _text(img, max(left - text_width(ylab[-1]) - 8, 0), top - CHAR_H - pad - 4, ylabel)
    if xlabel:
        _text(img, (left + right - text_width(xlabel)) // 2, height - pad - CHAR_H, xlabel)
    if entries:
        _legend(img, entries, box)
    _write_png(path, img)


def _legend(img: np.ndarray, entries: list[tuple[str, tuple]], box: tuple[int, int, int, int]) -> None:
    """Boxed legend, a colour swatch and name per series, top-right unless that would hide more data."""
    row, swatch = CHAR_H + 8, 24
    # At most half the plot wide (long names are clipped) so it never hides most of the data.
    w = min(8 + swatch + 8 + max(text_width(n) for n, _ in entries) + 8, (box[2] - box[0]) // 2)
    h = min(row * len(entries) + 6, box[3] - box[1] - 16)
    corners = [(box[2] - 8 - w, box[1] + 8), (box[0] + 8, box[1] + 8),
               (box[2] - 8 - w, box[3] - 8 - h), (box[0] + 8, box[3] - 8 - h)]

    def hidden(corner):  # data pixels (neither background nor grid) the legend would cover there
        patch = img[corner[1]:corner[1] + h + 1, corner[0]:corner[0] + w + 1].astype(int)
        return int(((patch != WHITE).any(axis=2) & (patch != GRID).any(axis=2)).sum())

    x0, y0 = min(corners, key=hidden)  # min keeps the first (top-right) corner on ties
    x1, y1 = x0 + w, y0 + h
    _rect(img, x0, y0, x1, y1, WHITE)
    _rect(img, x0, y0, x1, y1, GREY, fill=False)
    for i, (name, color) in enumerate(entries):
        ty = y0 + 8 + i * row
        if ty + CHAR_H > y1:  # too many series for the plot height: show those that fit
            break
        _rect(img, x0 + 8, ty + CHAR_H // 2 - 2, x0 + 8 + swatch, ty + CHAR_H // 2 + 2, color)
        _text(img[:, :x1 - 4], x0 + 16 + swatch, ty, name)  # slicing clips long names inside the box


def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes for an (height, width, 3) uint8 RGB image: 8-bit truecolour, no interlace, filter 0."""
    h, w, _ = img.shape

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    # Every scanline starts with its filter type; 0 ("None") leaves the bytes as they are.
    raw = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, w * 3)], axis=1).tobytes()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _write_png(path, img: np.ndarray) -> None:
    """Write atomically, so readers never see a partial PNG."""
    write_atomic(path, encode_png(img))
