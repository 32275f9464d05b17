"""What `python -m pipeline run` shows a person while it runs and when it ends.

In a terminal: a live view (rich, the standard library for this in Python), redrawn four times a second, of
every step and of each simulated host of the running one: its progress bar, rows, rows/s, GFLOP/s, eta and
memory. Elsewhere (stderr a pipe or a file, `CI` set, TERM=dumb): plain lines, the step events and each host's
progress lines as they come. Both end with the same summary, from the execution record: seconds and rows/s per
step, seconds, rows, rows/s and peak memory per host.

The live view reads snapshots of a pipeline/local/watch.Watch that the runner keeps up to date.
"""
from __future__ import annotations

import os
import sys
import threading
from typing import TextIO

from pipeline.local.watch import HostState, StepState, Watch
from steps.contract import PROGRESS_LINE

RESTARTED = "restarted after an injected fault"


def live_wanted(stream: TextIO) -> bool:
    """A person watching a terminal: not a pipe or file, not CI, not a dumb terminal."""
    return stream.isatty() and not os.environ.get("CI") and os.environ.get("TERM", "") != "dumb"


class RunDisplay:
    """`with RunDisplay(...) as shown:` pass shown.say, shown.echo and shown.watch to the run."""

    def __init__(self, verbose: bool = False, stream: TextIO | None = None, live: bool | None = None):
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.live = live_wanted(self.stream) if live is None else live
        self.watch = Watch() if self.live else None
        self._lock = threading.Lock()
        self._live = None

    def __enter__(self) -> "RunDisplay":
        if self.live:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream, force_terminal=True)
            self._live = Live(get_renderable=lambda: render(self.watch.snapshot()), console=console,
                              refresh_per_second=4, transient=False, redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live:
            self._live.refresh()
            self._live.stop()

    def say(self, line: str) -> None:
        """A step event: above the live view, or a plain line."""
        if self._live:
            self._live.console.print(printable(line), markup=False, highlight=False)
        else:
            self._print(line)

    def echo(self, line: str) -> None:
        """A host's output line ("[Similarity algo-2] ..."): all of them with --verbose, else in plain mode its
        progress lines and restarts (the live view shows those itself)."""
        if self.verbose:
            self.say(line)
        elif not self._live and (PROGRESS_LINE.search(line) or RESTARTED in line):
            self._print(line)

    def _print(self, line: str) -> None:
        with self._lock:  # hosts' output threads share the stream: whole lines only
            try:
                print(printable(line), file=self.stream, flush=True)
            except OSError:  # a closed terminal (the run goes on after SIGHUP) is no error
                pass


def printable(line: str) -> str:
    """Control and format characters (newlines, ESC, bidi overrides) written as escapes: one line stays one, so a
    value or a file name cannot forge a line (an `error:` of its own)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(line))


class StatusDisplay:
    """`status --watch`: the execution's lines redrawn in place in a terminal; elsewhere printed, with the time,
    each time they change."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None):
        self.stream = stream or sys.stdout
        self.live = live_wanted(self.stream) if live is None else live
        self._live = None
        self._last: list[str] | None = None

    def __enter__(self) -> "StatusDisplay":
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._live = Live("", console=Console(file=self.stream, force_terminal=True), auto_refresh=False)
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live:
            self._live.stop()

    def show(self, lines: list[str]) -> None:
        import time

        if self._live:
            from rich.text import Text

            self._live.update(Text("\n".join([printable(line) for line in lines] +
                                             [f"(updated {time.strftime('%H:%M:%S')})"])), refresh=True)
        elif lines != self._last:
            print(f"--- {time.strftime('%H:%M:%S')}", *map(printable, lines), sep="\n", file=self.stream, flush=True)
        self._last = lines


# ---- the live view ---------------------------------------------------------------------------------------------

MARK = {"Succeeded": "[green]✔[/]", "Executing": "[yellow]▶[/]", "Failed": "[red]✘[/]", "Stopped": "[red]■[/]",
        "Skipped": "[green]✔[/]", "NotStarted": "[dim]·[/]"}


def render(steps: list[StepState]):
    """The steps on one line, then a table of the running step's hosts."""
    import time

    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    now = time.monotonic()
    line = []
    for step in steps:
        took = step.seconds if step.seconds is not None else (now - step.started if step.started else None)
        line.append(f"{MARK.get(step.status, '?')} {step.name}" + (f" [dim]{took:.1f} s[/]" if took is not None else ""))
    # The running step; between steps and at the end, the one with the most hosts (the similarity hosts).
    current = next((s for s in steps if s.status == "Executing"), None) or max(
        reversed(steps), key=lambda s: len(s.hosts), default=None)
    parts = [Text.from_markup("   ".join(line))]
    if current and current.hosts:
        table = Table(box=None, pad_edge=False, header_style="bold", title_justify="left",
                      title=f"{current.name} ({current.job})" if current.job else current.name)
        for column, right in (("host", False), ("", False), ("progress", False), ("rows", True), ("rows/s", True),
                              ("GFLOP/s", True), ("eta", True), ("memory", True), ("peak", True)):
            table.add_column(column, justify="right" if right else "left", no_wrap=True)
        for host in current.hosts.values():
            table.add_row(*host_cells(host, now, ProgressBar))
        parts.append(table)
    return Group(*parts)


def host_cells(host: HostState, now: float, bar_type) -> list:
    p = host.progress or {}
    percent = float(p.get("percent") or (100.0 if host.status == "done" else 0.0))
    state = {"running": "[yellow]running[/]", "done": "[green]done[/]", "failed": "[red]failed[/]",
             "stopped": "[red]stopped[/]"}.get(host.status, host.status)
    if host.starts > 1:
        state += f" [dim](start {host.starts})[/]"
    bar = bar_type(total=100.0, completed=percent, width=24)
    total = p.get("total") or ""
    rows = f"{int(p['done']):,}/{'~' if total.startswith('~') else ''}{int(total.lstrip('~')):,}" if p else ""
    eta = f"{p['eta']} s" if p and host.status == "running" else ""
    return [host.name, state, bar, rows, f"{int(p['rate']):,}" if p else "", p.get("gflops") or "", eta,
            megabytes(host.rss), megabytes(host.peak_rss)]


def megabytes(value: int | None) -> str:
    return "" if value is None else f"{value / 1e6:,.0f} MB"


# ---- the summary -------------------------------------------------------------------------------------------------


def summary_lines(execution) -> list[str]:
    """Per step: status, seconds, rows, rows/s; per host: seconds, rows, rows/s, peak memory (from the record)."""
    steps = [["step", "status", "seconds", "rows", "rows/s"]]
    hosts = [["host", "seconds", "rows", "rows/s", "peak memory"]]
    for record in execution.steps.values():
        done = [int(h["progress"]["done"]) for h in record.hosts.values() if h.get("progress")]
        rows = sum(done) if done else None
        steps.append([record.name, record.status, f"{record.seconds:.1f}" if record.seconds is not None else "",
                      f"{rows:,}" if rows is not None else "",
                      f"{rows / record.seconds:,.0f}" if rows and record.seconds else ""])
        for name, host in record.hosts.items():
            progress = host.get("progress") or {}
            hosts.append([f"{record.name} {name}", f"{host['seconds']:.1f}" if host.get("seconds") is not None else "",
                          f"{int(progress['done']):,}" if progress else "",
                          f"{int(progress['rate']):,}" if progress else "", megabytes(host.get("peak_rss_bytes"))])
    return [f"summary of {execution.id}:"] + columns(steps, "<<>>>") + columns(hosts, "<>>>>")


def columns(table: list[list[str]], align: str) -> list[str]:
    """Text columns, each aligned as `align` says ("<" left, ">" right)."""
    widths = [max(len(row[i]) for row in table) for i in range(len(align))]
    return ["  " + "  ".join(cell.ljust(w) if a == "<" else cell.rjust(w)
                             for cell, w, a in zip(row, widths, align)).rstrip() for row in table]
