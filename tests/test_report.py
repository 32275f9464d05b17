"""report.html: its figures equal the ones computed from the whole result at once, it streams (memory: one counter
per row, never N x k), it escapes what it shows, it is registered, and a browser (headless Chromium) renders it."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from steps.formats import report
from tests.test_steps import run_hosts, run_merge, run_preprocess, run_register


def random_result(rng, rows: int, k: int):
    """A result in the artifact's form: neighbours sorted by score, some rows short (padded) or empty."""
    neighbors = rng.integers(0, rows, (rows, k))
    scores = np.sort(rng.uniform(-1, 1, (rows, k)).astype(np.float32), axis=1)[:, ::-1].copy()
    found = rng.integers(0, k + 1, rows)
    found[rows // 3] = 0
    pad = np.arange(k)[None, :] >= found[:, None]
    neighbors[pad], scores[pad] = -1, np.nan
    return neighbors, scores


def test_streamed_statistics_equal_those_of_the_whole_result():
    rng = np.random.default_rng(5)
    rows, k = 1000, 7
    neighbors, scores = random_result(rng, rows, k)
    stats = report.Stats(rows, k)
    batches = [(first, neighbors[first:first + 64], scores[first:first + 64]) for first in range(0, rows, 64)]
    assert [b[0] for b in stats.observe(iter(batches))] == list(range(0, rows, 64))  # handed on unchanged
    kept = scores[neighbors >= 0]
    edges = np.linspace(-1, 1, report.SCORE_BINS + 1)
    assert stats.pairs == kept.size and np.isclose(stats.score_sum, kept.astype(np.float64).sum())
    assert np.array_equal(stats.scores, np.histogram(kept, edges)[0])
    first = scores[neighbors[:, 0] >= 0, 0]
    assert np.array_equal(stats.nearest, np.histogram(first, edges)[0])
    assert np.array_equal(stats.per_row, np.bincount((neighbors >= 0).sum(axis=1), minlength=k + 1))
    degree = np.bincount(neighbors[neighbors >= 0], minlength=rows)
    assert np.array_equal(stats.in_degree, degree)
    expected = sorted(range(rows), key=lambda r: (-degree[r], r))[:report.TOP_ITEMS]
    assert stats.most_connected() == [(r, int(degree[r])) for r in expected]
    empty = np.flatnonzero((neighbors >= 0).sum(axis=1) == 0)
    assert stats.without == empty[:report.SAMPLE_ROWS].tolist()
    one_by_one = report.Stats(rows, k)  # small batches: the counts per row come from sorting each batch instead
    for first in range(rows):
        one_by_one.add(first, neighbors[first:first + 1], scores[first:first + 1])
    assert np.array_equal(one_by_one.in_degree, degree) and np.array_equal(one_by_one.scores, stats.scores)
    # Memory: one counter per row plus fixed-size histograms, whatever k.
    held = sum(v.nbytes for v in vars(stats).values() if isinstance(v, np.ndarray))
    assert held == rows * 4 + 2 * report.SCORE_BINS * 8 + (k + 1) * 8


def test_the_page_escapes_ids_and_draws_its_figures():
    rng = np.random.default_rng(1)
    rows, k = 50, 4
    neighbors, scores = random_result(rng, rows, k)
    neighbors[:, 0] = np.where(neighbors[:, 0] >= 0, 7, -1)  # row 7 is everyone's nearest: the top hub
    stats = report.Stats(rows, k)
    stats.add(0, neighbors, scores)
    ids = pa.array([f"<b>item&{i}</b>" for i in range(rows)])
    manifest = {"rows": rows, "dim": 3, "k": k, "threshold": 0.5, "execution_id": "exec-<1>", "artifact_uri": "s3://b/a",
                "counts": {"zero_rows": 1, "rows_with_fewer_than_k": 3}, "input": {"uri": "s3://b/in", "fingerprint": "f" * 64},
                "parameters": {"TopK": "4"}, "hosts": [{"host": "algo-1", "start": 0, "stop": 50, "seconds": 2.0}],
                "timings": {"merge_seconds": 0.1}}
    page = report.render(stats, manifest, ids)
    assert "<b>item" not in page and "&lt;b&gt;item&amp;7&lt;/b&gt;" in page and "exec-&lt;1&gt;" in page
    assert page.count("<svg") == 2 and "<script" not in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")
    hubs = page.split("Most connected items")[1]
    assert hubs.index("item&amp;7") < hubs.index("</table>")  # listed first
    assert "f" * 64 in page and "scoring at least MinScore 0.5" in page


@pytest.fixture
def artifact(monkeypatch, tmp_path):
    X = np.random.default_rng(9).standard_normal((300, 8)).astype(np.float32)
    X[5] = 0  # an all-zero row: no neighbour, in no one's list
    normalized = run_preprocess(monkeypatch, tmp_path, X)
    model = run_hosts(monkeypatch, tmp_path, normalized, 3, k=5)
    code, _, folder = run_merge(monkeypatch, tmp_path, normalized, model, "r")
    assert code == 0
    return folder


def test_merge_writes_the_report_into_the_artifact_and_register_names_it(monkeypatch, tmp_path, artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert "report.html" in manifest["files"]  # size and sha256: Register checks it like the data files
    page = (artifact / "report.html").read_text()
    assert "Top-5 cosine neighbours of 300 rows" in page and page.count("<tr><td>algo-") == 3
    assert "1 of 300 rows have no neighbour (1 of them all-zero rows" in page
    code, root = run_register(monkeypatch, tmp_path, artifact, "r")
    assert code == 0
    record = json.loads((root / "processing/output/registration/registration.json").read_text())
    assert record["metadata"]["report_uri"] == "s3://bucket/runs/r/artifact/report.html"


def test_a_report_uri_past_the_metadata_limit_is_registered_by_name():
    from steps.register import report_uri

    files = {"files": {"report.html": {}}}
    assert report_uri({**files, "artifact_uri": "s3://b/" + "x" * 237}) == "s3://b/" + "x" * 237 + "/report.html"
    assert report_uri({**files, "artifact_uri": "s3://b/" + "x" * 238}) == "report.html"  # 257 characters otherwise
    assert report_uri({"files": {}, "artifact_uri": "s3://b/a"}) == "none"


# ---- a browser renders it ---------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="REPORT NOT RENDERED: no chromium on PATH (.ci/run installs Debian's `chromium`; "
                             "locally: apt-get install -y chromium)")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless, offline (no background networking, updates or sync), a fresh profile."""
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", *args], capture_output=True, timeout=120,
                          env={**os.environ, "HOME": str(tmp_path)})


def png_pixels(data: bytes) -> np.ndarray:
    """An 8-bit RGB or RGBA PNG (what Chromium writes) decoded: (height, width, channels)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.setdefault(kind, []).append(data[pos + 8:pos + 8 + length])
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][0][:10])
    assert depth == 8 and color in (2, 6)
    channels = 3 if color == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(chunks[b"IDAT"])), np.uint8).reshape(height, 1 + width * channels)
    out = np.zeros((height, width * channels), np.int32)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        up = out[y - 1] if y else np.zeros_like(line)
        if kind in (0, 2):  # None, Up
            out[y] = (line + (up if kind == 2 else 0)) % 256
            continue
        row, above = [0] * channels + line.tolist(), [0] * channels + up.tolist()  # Sub, Average, Paeth: left first
        for x in range(channels, len(row)):
            left, top, corner = row[x - channels], above[x], above[x - channels]
            if kind == 1:
                guess = left
            elif kind == 3:
                guess = (left + top) // 2
            else:
                p = left + top - corner
                guess = min((abs(p - left), 0, left), (abs(p - top), 1, top), (abs(p - corner), 2, corner))[2]
            row[x] = (row[x] + guess) % 256
        out[y] = row[channels:]
    return out.reshape(height, width, channels)


@needs_chromium
def test_headless_chromium_renders_the_report(tmp_path, artifact):
    page = (artifact / "report.html").as_uri()
    dom = chromium(tmp_path, "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr.decode()[-2000:]
    text = dom.stdout.decode()
    assert "Top-5 cosine neighbours of 300 rows" in text and text.count("<rect") > 10 and "Most connected items" in text
    shot = chromium(tmp_path, "--hide-scrollbars", "--window-size=1000,900", f"--screenshot={tmp_path / 'r.png'}", page)
    assert shot.returncode == 0, shot.stderr.decode()[-2000:]
    pixels = png_pixels((tmp_path / "r.png").read_bytes())[..., :3]
    assert pixels.shape[:2] == (900, 1000)
    ink = (pixels.min(axis=2) < 200).mean()  # text, bars, rules: not a blank page
    blue = ((pixels[..., 2] > 180) & (pixels[..., 0] < 90)).mean()  # the charts' bars (#3b6fd8)
    assert ink > 0.01 and blue > 0.001, (ink, blue)
