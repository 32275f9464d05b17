"""report.html, the artifact at a glance: one self-contained page (no script, no network: styles and SVG figures
inline) that a person opens in a browser. Written by Merge beside the data files, listed in the manifest.

    the parameters, the input and its fingerprints, the counts
    the score distribution (every kept pair, and each row's nearest neighbour)
    neighbours per row, and the rows with none at or above MinScore
    the most connected items (listed most often as someone's neighbour)
    per-host rows and time

Streaming: Stats sees the (first_row, neighbors, scores) batches Merge writes, as they pass; it holds fixed-size
histograms, one counter per row (how often it is a neighbour: N values, never N x k) and a few sample ids.
"""
from __future__ import annotations

import html
from typing import Iterable, Iterator

import numpy as np

SCORE_BINS = 2000  # over [-1, 1]: bins 0.001 wide, grouped into at most BARS bars over the range the scores occupy
BARS = 60  # bars per chart at most (neighbours per row: counts 0..k grouped likewise)
TOP_ITEMS = 20  # most connected items listed
SAMPLE_ROWS = 20  # rows without a neighbour listed by id


class Stats:
    """Histograms of a stream of result batches; memory: one counter per row, plus fixed-size arrays."""

    def __init__(self, rows: int, k: int, neighbor_rows: int | None = None):
        """`neighbor_rows`: the rows neighbours are drawn from, when not these (queries mode: the corpus's)."""
        self.rows, self.k = rows, k
        self.scores = np.zeros(SCORE_BINS, np.int64)  # every kept pair
        self.nearest = np.zeros(SCORE_BINS, np.int64)  # each row's best neighbour
        self.per_row = np.zeros(k + 1, np.int64)  # rows by how many neighbours they have
        self.in_degree = np.zeros(rows if neighbor_rows is None else neighbor_rows, np.uint32)  # times a neighbour
        self.without: list[int] = []  # the first rows that have no neighbour
        self.pairs, self.score_sum = 0, 0.0
        self.low, self.high = np.inf, -np.inf

    def observe(self, batches: Iterable[tuple[int, np.ndarray, np.ndarray]]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """The batches, unchanged, each added to the statistics as it passes."""
        for batch in batches:
            self.add(*batch)
            yield batch

    def add(self, first: int, neighbors: np.ndarray, scores: np.ndarray) -> None:
        found = neighbors >= 0
        kept = scores[found]
        self.scores += _binned(kept)
        self.nearest += _binned(scores[found[:, 0], 0])
        counts = found.sum(axis=1)
        self.per_row += np.bincount(counts, minlength=self.k + 1)
        if len(self.without) < SAMPLE_ROWS:
            self.without += (first + np.flatnonzero(counts == 0)[:SAMPLE_ROWS - len(self.without)]).tolist()
        listed = neighbors[found]
        if len(self.in_degree) <= 4 * listed.size:  # a count per row costs less than sorting the batch
            self.in_degree += np.bincount(listed, minlength=len(self.in_degree)).astype(np.uint32)
        else:  # many rows, a small batch: sort the batch, not N-sized work
            items, times = np.unique(listed, return_counts=True)
            self.in_degree[items] += times.astype(np.uint32)
        if kept.size:
            self.pairs += int(kept.size)
            self.score_sum += float(kept.astype(np.float64).sum())
            self.low, self.high = min(self.low, float(kept.min())), max(self.high, float(kept.max()))

    def most_connected(self, n: int = TOP_ITEMS) -> list[tuple[int, int]]:
        """(row, times listed as a neighbour), most first; ties by lower row."""
        rows = len(self.in_degree)
        if not rows:
            return []
        degree = self.in_degree.astype(np.int64)
        n = min(n, rows)
        bar = int(np.partition(degree, rows - n)[rows - n])  # the n-th largest count
        above = np.flatnonzero(degree > bar)
        chosen = np.concatenate([above, np.flatnonzero(degree == bar)[:n - len(above)]])  # ties: lower rows
        ranked = sorted((-int(degree[r]), int(r)) for r in chosen)
        return [(row, -minus) for minus, row in ranked if minus < 0]


def _binned(scores: np.ndarray) -> np.ndarray:
    index = np.clip(((scores.astype(np.float64) + 1.0) * (SCORE_BINS / 2.0)).astype(np.int64), 0, SCORE_BINS - 1)
    return np.bincount(index, minlength=SCORE_BINS)


# ---- the page -------------------------------------------------------------------------------------------------

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2330;margin:2em auto;max-width:980px;padding:0 1em}
h1{font-size:22px;margin:0 0 .2em}h2{font-size:16px;margin:1.6em 0 .5em;border-bottom:1px solid #dde2ea}
.sub{color:#5b6474;margin:0 0 1em}.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #dde2ea;border-radius:6px;padding:8px 12px;min-width:130px}
.card b{display:block;font-size:20px}.card span{color:#5b6474;font-size:12px}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 10px;border-bottom:1px solid #eef1f5;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}code{font-size:12px;word-break:break-all}
svg text{font:11px system-ui,sans-serif;fill:#5b6474}.legend{font-size:12px;color:#5b6474}
.sw{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px;vertical-align:-1px}
"""
BLUE, ORANGE = "#3b6fd8", "#e8883a"


def render(stats: Stats, manifest: dict, ids, neighbor_ids=None) -> str:
    """The page. `manifest` is the artifact's (without its files); `ids` the row ids (a pyarrow array);
    `neighbor_ids` those of the rows neighbours are drawn from, when not these (queries mode: the corpus's)."""
    neighbor_ids = ids if neighbor_ids is None else neighbor_ids
    e = html.escape
    counts, inp = manifest["counts"], manifest["input"]
    threshold = manifest.get("threshold")
    mean = stats.score_sum / stats.pairs if stats.pairs else float("nan")
    none = int(stats.per_row[0])
    cards = [("rows", f"{manifest['rows']:,}"), ("dimension", f"{manifest['dim']:,}"), ("k", f"{manifest['k']:,}"),
             ("MinScore", "none" if threshold is None else f"{threshold:g}"), ("pairs kept", f"{stats.pairs:,}"),
             ("mean score", f"{mean:.4f}"), ("rows without neighbours", f"{none:,}"),
             ("all-zero rows", f"{counts.get('zero_rows', 0):,}")]
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>allpairs report: {e(str(manifest['execution_id']))}"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>Top-{manifest['k']} cosine neighbours of {manifest['rows']:,} rows</h1>",
             f"<p class=sub>execution <code>{e(str(manifest['execution_id']))}</code> &middot; artifact "
             f"<code>{e(str(manifest['artifact_uri']))}</code></p>",
             "<div class=cards>" + "".join(f"<div class=card><b>{v}</b><span>{e(k)}</span></div>" for k, v in cards)
             + "</div>"]
    parts += [f"<h2>Score distribution</h2><p class=legend>score of every kept pair (min {stats.low:.4f}, max "
              f"{stats.high:.4f}), and of each row's nearest neighbour"
              f"<span class=sw style='background:{BLUE}'></span>all pairs"
              f"<span class=sw style='background:{ORANGE}'></span>nearest</p>" if stats.pairs else
              "<h2>Score distribution</h2><p>No pair was kept.</p>"]
    if stats.pairs:
        parts.append(_score_chart(stats))
    above = f" scoring at least MinScore {threshold:g}" if threshold is not None else ""
    short = f"{counts.get('rows_with_fewer_than_k', 0):,} rows have fewer than k."
    parts += ["<h2>Neighbours per row</h2>", _rows_chart(stats),
              f"<p>{none:,} of {stats.rows:,} rows have no neighbour{above} ({counts.get('zero_rows', 0):,} of them "
              f"all-zero rows, which have no direction); {short}</p>" if none else
              f"<p>Every row has a neighbour{above}; {short}</p>"]
    if stats.without:
        parts.append("<p>The first of them: " + ", ".join(f"<code>{e(str(ids[r].as_py()))}</code>"
                                                            for r in stats.without) + "</p>")
    top = stats.most_connected()
    parts += ["<h2>Most connected items</h2><p>listed most often among the others' top-k (hubs):</p>",
              _table(["id", "row", "times a neighbour"], [(f"<code>{e(str(neighbor_ids[r].as_py()))}</code>", f"{r:,}", f"{n:,}")
                                                          for r, n in top], numeric=(1, 2)) if top else "<p>none</p>"]
    hosts = manifest.get("hosts") or []
    # Each host computes its share of the pairs and writes partial lists (rows of its own blocks and mirrors).
    parts += ["<h2>Similarity hosts</h2>", _table(
        ["host", "partial lists", "list rows", "seconds", "list rows/s", "CPU seconds", "steps resumed"],
        [(e(str(h["host"])), f"{h.get('lists') or 0:,}", f"{h.get('list_rows') or 0:,}", _num(h.get("seconds")),
          _rate(h.get("list_rows") or 0, h.get("seconds")), _num(h.get("cpu_seconds")),
          f"{h.get('resumed_steps') or 0:,}") for h in hosts], numeric=(1, 2, 3, 4, 5, 6))]
    timings = manifest.get("timings") or {}
    parts += ["<h2>Run</h2>", _table(["", ""], [(e(k), e(str(v))) for k, v in [
        *[(f"parameter {name}", value) for name, value in sorted((manifest.get("parameters") or {}).items())],
        ("input", inp.get("uri")), ("input format", inp.get("format")), ("input fingerprint", inp.get("fingerprint")),
        ("normalized fingerprint", inp.get("normalized_fingerprint")), ("training job", manifest.get("training_job")),
        ("ids", f"{(manifest.get('ids') or {}).get('source')} ({(manifest.get('ids') or {}).get('type')})"),
        ("dropped rows (non-finite)", counts.get("dropped_rows", 0)),
        *[(name.replace("_", " "), value) for name, value in sorted(timings.items())]]])]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _num(value) -> str:
    return "" if value is None else f"{value:,.2f}"


def _rate(rows: int, seconds) -> str:
    return f"{rows / seconds:,.0f}" if seconds else ""


def _table(head: list[str], rows: list[tuple], numeric: tuple[int, ...] = ()) -> str:
    cls = lambda i: " class=n" if i in numeric else ""  # noqa: E731
    out = ["<table><tr>" + "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(head)) + "</tr>"]
    out += ["<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows]
    return "".join(out) + "</table>"


def _bars(series: list[tuple[np.ndarray, str]], labels: list[str], every: int, x_title: str, y_title: str, width: int = 940,
          height: int = 240) -> str:
    """A bar chart, several series side by side per slot, heights scaled to the largest value."""
    left, bottom, top = 60, 46, 18
    slots = len(labels)
    peak = max(int(values.max()) for values, _ in series) or 1
    slot = (width - left - 10) / max(slots, 1)
    bar = slot / len(series)
    plot = height - bottom - top
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role=img>",
           f"<line x1='{left}' y1='{top + plot}' x2='{width - 10}' y2='{top + plot}' stroke='#9aa3b2'/>"]
    for fraction in (0.5, 1.0):
        y = top + plot * (1 - fraction)
        out.append(f"<line x1='{left}' y1='{y:.1f}' x2='{width - 10}' y2='{y:.1f}' stroke='#eef1f5'/>"
                   f"<text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end'>{peak * fraction:,.0f}</text>")
    for s, (values, color) in enumerate(series):
        for i, v in enumerate(values.tolist()):
            if v:
                h = max(1.0, plot * v / peak)
                out.append(f"<rect x='{left + i * slot + s * bar:.1f}' y='{top + plot - h:.1f}' width='{max(bar - 0.6, 0.6):.1f}' "
                           f"height='{h:.1f}' fill='{color}'><title>{labels[i]}: {v:,}</title></rect>")
    for i in range(0, slots, every):
        out.append(f"<text x='{left + (i + 0.5) * slot:.1f}' y='{top + plot + 16}' text-anchor='middle'>{labels[i]}</text>")
    out.append(f"<text x='{left + (width - left) / 2:.0f}' y='{height - 6}' text-anchor='middle'>{x_title}</text>"
               f"<text x='{left + 4}' y='{top - 6}'>{y_title}</text>")
    return "".join(out) + "</svg>"


def _score_chart(stats: Stats) -> str:
    used = np.flatnonzero(stats.scores + stats.nearest)
    lo, hi = int(used.min()), int(used.max()) + 1  # only the range the scores occupy
    group = -(-(hi - lo) // BARS)
    starts = np.arange(lo, hi, group)
    labels = [f"{-1 + 2 * i / SCORE_BINS:.3f}" for i in starts]
    return _bars([(np.add.reduceat(stats.scores[:hi], starts), BLUE), (np.add.reduceat(stats.nearest[:hi], starts), ORANGE)],
                 labels, every=max(1, len(starts) // 10), x_title="score (bar start)", y_title="pairs")


def _rows_chart(stats: Stats) -> str:
    group = -(-(stats.k + 1) // BARS)
    starts = np.arange(0, stats.k + 1, group)
    labels = [f"{i}" if group == 1 else f"{i}-{min(i + group - 1, stats.k)}" for i in starts]
    return _bars([(np.add.reduceat(stats.per_row, starts), BLUE)], labels, every=max(1, len(labels) // 12),
                 x_title="neighbours found", y_title="rows")
