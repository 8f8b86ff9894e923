"""Tests for jaxgpt.report.plot: a valid RGB PNG, drawn lines, odd series and compact tick labels."""

import struct
import zlib

import numpy as np
import pytest

from jaxgpt.report import plot


def read_png(path):
    """(width, height, pixels) of a PNG written by plot, checking its structure and every CRC."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,), tag = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(tag + body)
        chunks.append((tag, body))
        pos += 12 + length
    assert [t for t, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, ctype, interlace) == (8, 2, 0)  # 8-bit RGB, not interlaced
    raw = zlib.decompress(chunks[1][1])
    assert len(raw) == h * (1 + 3 * w)
    rows = np.frombuffer(raw, np.uint8).reshape(h, 1 + 3 * w)
    assert not rows[:, 0].any()  # filter type 0 on every row
    return w, h, rows[:, 1:].reshape(h, w, 3)


def count_color(px, color):
    return int((px == np.array(color, np.uint8)).all(axis=2).sum())


def has_color(px, color):
    return count_color(px, color) > 0


def test_loss_curves_make_a_valid_png(tmp_path):
    t = np.linspace(0, 2_000_000, 50)
    path = tmp_path / "loss.png"
    plot.plot_lines(path, {"train": (t, 4.2 - 2.7 * t / t[-1]), "val": (t[::5], 4.3 - 2.6 * t[::5] / t[-1])},
                    title="Loss", xlabel="tokens", ylabel="loss", width=640, height=400)
    w, h, px = read_png(path)
    assert (w, h) == (640, 400)
    assert (px != 255).any()
    assert count_color(px, plot.COLORS[0]) > 1000  # a 2 px line, far more than the legend swatch
    assert has_color(px, plot.COLORS[1])
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]  # the temp file was renamed away


def test_empty_single_point_and_nan_series(tmp_path):
    path = tmp_path / "odd.png"
    plot.plot_lines(path, {"empty": ([], []), "dot": ([3.0], [2.0]),
                           "gappy": ([0, 1, 2, 3, 4], [1.0, float("nan"), 2.0, float("inf"), 1.5])})
    w, h, px = read_png(path)
    assert (w, h) == (800, 500)
    assert not has_color(px, plot.COLORS[0])  # the empty series draws nothing, not even a legend swatch
    assert has_color(px, plot.COLORS[1]) and has_color(px, plot.COLORS[2])


def test_flat_all_nan_and_no_series_do_not_crash(tmp_path):
    plot.plot_lines(tmp_path / "flat.png", {"flat": ([0, 1, 2], [1.5, 1.5, 1.5])})
    plot.plot_lines(tmp_path / "nan.png", {"nan": ([0, 1], [float("nan")] * 2)})
    plot.plot_lines(tmp_path / "none.png", {})
    assert has_color(read_png(tmp_path / "flat.png")[2], plot.COLORS[0])
    assert not has_color(read_png(tmp_path / "nan.png")[2], plot.COLORS[0])


def test_bad_input_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="x values"):
        plot.plot_lines(tmp_path / "a.png", {"a": ([0, 1], [1.0])})
    with pytest.raises(ValueError, match="too small"):
        plot.plot_lines(tmp_path / "a.png", {}, width=50, height=50)
    assert list(tmp_path.iterdir()) == []


def test_ticks_are_round_and_compact():
    ticks = plot.nice_ticks(0, 2_000_000)
    assert [plot.format_tick(v, ticks[1] - ticks[0]) for v in ticks] == ["0", "500k", "1M", "1.5M", "2M"]
    ticks = plot.nice_ticks(1.4, 2.6)
    assert ticks[0] <= 1.4 and ticks[-1] >= 2.6 and 4 <= len(ticks) <= 6
    assert plot.format_tick(2.0, 0.5) == "2.0" and plot.format_tick(250_000, 250_000) == "250k"
