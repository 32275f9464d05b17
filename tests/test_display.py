"""What `python -m pipeline run` shows: a live view on a terminal, plain lines under CI or in a pipe, and a
summary (seconds and rows/s per step, peak memory per host) either way."""
from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.display import RunDisplay, live_wanted, render
from pipeline.local.watch import Watch

REPO = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(autouse=True)
def two_blocks(monkeypatch):
    """Grids of 300-row blocks (the hosts read ALLPAIRS_BLOCK_ROWS): each of 2 hosts has 300 of the 600 rows."""
    monkeypatch.setenv("ALLPAIRS_BLOCK_ROWS", "300")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("display") / "X.npy"
    np.save(path, np.random.default_rng(2).standard_normal((600, 12)).astype(np.float32))
    return path


def command(data: Path, tmp_path: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", "--workdir", str(tmp_path / "w"), "--param", f"InputData={data}",
            "--param", f"OutputPrefix={tmp_path / 'out'}", "--param", "InstanceCount=2"]


def test_under_ci_the_run_prints_plain_lines_and_a_summary(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CI", "true")
    assert main(command(data, tmp_path)[3:]) == 0
    done = capsys.readouterr()
    assert not ANSI.search(done.err + done.out)  # no cursor movement, no colour: lines a log keeps
    err = done.err.splitlines()
    assert "Similarity: started (Training job allpairs-similarity-" in "\n".join(err)
    for host in ("algo-1", "algo-2"):
        assert any(re.fullmatch(rf"\[Similarity {host}\] {host}: progress 100\.0% rows 300/300 rows/s \d+ "
                                r"GFLOP/s [\d.]+ eta 0 s", line) for line in err), err
    assert any(line.startswith("[Merge algo-1] merge: progress 100.0% rows 600/600") for line in err)
    out = done.out.splitlines()
    start = out.index(next(line for line in out if line.startswith("summary of local-")))
    steps = [line.split() for line in out[start + 2:start + 6]]
    assert [row[:2] for row in steps] == [["Preprocess", "Succeeded"], ["Similarity", "Succeeded"],
                                          ["Merge", "Succeeded"], ["Register", "Succeeded"]]
    assert steps[1][3] == "600"  # both hosts' rows
    hosts = {" ".join(row[:2]): row for row in (line.split() for line in out[start + 7:])}
    assert hosts["Similarity algo-2"][3] == "300" and hosts["Similarity algo-2"][-1] == "MB"
    assert 5 < float(hosts["Similarity algo-2"][-2].replace(",", "")) < 5000  # a resident size in MB


def test_on_a_terminal_the_run_is_a_live_view(data, tmp_path):
    """The real command on a pseudo-terminal, CI unset: a redrawn table of the hosts, with progress bars."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(TERM="xterm-256color", COLUMNS="140", LINES="40")
    controller, terminal = pty.openpty()
    process = subprocess.Popen(command(data, tmp_path), cwd=REPO, stdin=terminal, stdout=terminal, stderr=terminal,
                               env=env, close_fds=True)
    os.close(terminal)
    screen = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the other side closed: the run ended
                break
            if not chunk:
                break
            screen += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    assert process.wait(timeout=60) == 0, screen.decode(errors="replace")[-3000:]
    text = screen.decode(errors="replace")
    assert ANSI.search(text)  # the view is redrawn in place
    plain = ANSI.sub("", text)
    assert "✔ Preprocess" in plain and "Similarity (allpairs-similarity-" in plain
    assert re.search(r"algo-2\s+done\s+━+\s+300/300", plain), plain[-3000:]
    assert "GFLOP/s" in plain and "peak" in plain and "summary of local-" in plain


def test_the_view_shows_each_host_of_the_running_step():
    watch = Watch()
    watch.planned(["Preprocess", "Similarity", "Merge"])
    watch.step_started("Preprocess", "job-p")
    watch.step_ended("Preprocess", "Succeeded", 1.25)
    watch.step_started("Similarity", "job-s")
    for host, done in (("algo-1", 4608), ("algo-2", 12288)):
        watch.host_started("Similarity", host)
        watch.host_line("Similarity", host, f"{host}: progress ...", {
            "percent": f"{100 * done / 12288:.1f}", "done": str(done), "total": "12288", "rate": "2210",
            "gflops": "28.3", "eta": "3"})
        watch.host_memory("Similarity", host, 412_000_000, 500_000_000)
    watch.host_ended("Similarity", "algo-2", "done", 5.5, 510_000_000)
    watch.host_started("Similarity", "algo-1")  # restarted after a fault
    from rich.console import Console

    console = Console(file=io.StringIO(), width=140, force_terminal=False)
    console.print(render(watch.snapshot()))
    text = console.file.getvalue()
    assert "✔ Preprocess 1.2 s" in text and "▶ Similarity" in text and "· Merge" in text
    assert re.search(r"algo-1\s+running \(start 2\)", text)
    assert re.search(r"algo-2\s+done\s+━+\s+12,288/12,288\s+2,210\s+28\.3\s+510 MB", text), text


def test_live_only_on_a_terminal_and_never_under_ci(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert live_wanted(Terminal()) and not live_wanted(io.StringIO())
    monkeypatch.setenv("CI", "true")
    assert not live_wanted(Terminal())
    monkeypatch.delenv("CI")
    monkeypatch.setenv("TERM", "dumb")
    assert not live_wanted(Terminal())
    shown = RunDisplay(stream=io.StringIO(), live=False)
    with shown:
        shown.echo("[Similarity algo-1] algo-1: checkpoint rows [0, 10) saved")  # not a progress line: quiet
        shown.echo("[Similarity algo-1] algo-1: progress 10.0% rows 1/10 rows/s 1 GFLOP/s 0.1 eta 9 s")
        shown.say("Merge: started")
    assert shown.stream.getvalue().splitlines() == [
        "[Similarity algo-1] algo-1: progress 10.0% rows 1/10 rows/s 1 GFLOP/s 0.1 eta 9 s", "Merge: started"]
    assert shown.watch is None
