"""What a spot interruption or a stop costs one similarity host: checkpoint cadence, seconds to honour a SIGTERM,
work lost to a kill -9, and that the resumed artifact is the uninterrupted one, byte for byte.

    python benchmarks/bench_stops.py [--rows 200000 --dim 128 --checkpoint-seconds 5 --repeats 3 --seed 0]

The similarity step runs as its container would (python -m steps.similarity, one host, a /opt/ml root of its
own, ALLPAIRS_CHECKPOINT_SECONDS from --checkpoint-seconds), its output lines timestamped as they arrive:
1. uninterrupted: the time of every checkpoint, the largest gap between consecutive ones (the goal: at most
   checkpoint_seconds plus one step, a step being the longest time between two progress lines);
2. SIGTERM at --repeats random moments of that run: seconds until the host exits, rows it saved;
3. kill -9 at --repeats random moments, then a restart on the same checkpoints: seconds and rows of work lost
   (computed but not yet in a checkpoint), and the merged artifact's sha256 against the uninterrupted run's.
The moments are uniform over the uninterrupted run's wall time, start-up included (seeded). Timings depend on the
machine's load: the load average is printed before and after.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PROGRESS = re.compile(r"progress [\d.]+% rows (\d+)/(\d+)")
# The host's lines (steps/formats/checkpoints.py progress_text): a pass's progress is counted in steps, each
# worth its share of the host's rows.
CHECKPOINT = re.compile(r"checkpoint: pass of block rows \[\d+, \d+\): (?:(\d+) of (\d+) steps done|done)")
RESUMED = re.compile(r"resuming the pass of block rows \[\d+, \d+\) from checkpoints: (\d+) of (\d+) steps done")
STOPPED = re.compile(r"stopped with (\d+) of (\d+) steps done(?:, and (\d+) of (\d+) products of the next)?")


def step(module: str, root: Path, argv=(), env=None) -> None:
    done = subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "ALLPAIRS_OPT_ML": str(root), **(env or {})})
    if done.returncode:
        raise SystemExit(f"{module} failed: {done.stderr.strip().splitlines()[-1]}")


class Host:
    """One similarity host started now; its lines with their arrival times (seconds since start)."""

    def __init__(self, root: Path, env: dict):
        self.began = time.monotonic()
        self.lines: list[tuple[float, str]] = []
        self.process = subprocess.Popen([sys.executable, "-m", "steps.similarity"], cwd=REPO, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append((time.monotonic() - self.began, line.rstrip()))

    def wait(self) -> float:
        self.process.wait()
        self.reader.join()
        return time.monotonic() - self.began

    def times(self, pattern: re.Pattern) -> list[tuple[float, re.Match]]:
        return [(t, m) for t, line in self.lines if (m := pattern.search(line))]


def host_root(base: Path, normalized: Path, checkpoints: Path) -> Path:
    root = base / f"host-{time.monotonic_ns()}"
    (root / "input/config").mkdir(parents=True)
    (root / "input/data").mkdir()
    (root / "input/data/normalized").symlink_to(normalized)
    (root / "checkpoints").symlink_to(checkpoints)
    (root / "model").mkdir()
    (root / "input/config/resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    (root / "input/config/hyperparameters.json").write_text(json.dumps(
        {"top_k": "10", "min_score": "-1.0", "memory_budget_mb": "1024", "threads": "0"}))
    return root


def start(base: Path, normalized: Path, checkpoints: Path, interval: float) -> tuple[Host, Path]:
    root = host_root(base, normalized, checkpoints)
    env = {**os.environ, "PYTHONPATH": str(REPO), "ALLPAIRS_OPT_ML": str(root), "TRAINING_JOB_NAME": "bench",
           "ALLPAIRS_CHECKPOINT_SECONDS": str(interval), "ALLPAIRS_PROGRESS_SECONDS": "0"}
    return Host(root, env), root


def signal_at(base: Path, normalized: Path, interval: float, at: float, sig: int) -> tuple[Host, float, float, Path]:
    """A host on fresh checkpoints, sent `sig` `at` seconds after its start; returns it, when it was sent, when
    the host had exited (seconds since its start), its checkpoints."""
    ck = base / f"ck-{time.monotonic_ns()}"
    ck.mkdir()
    host, _ = start(base, normalized, ck, interval)
    time.sleep(max(0.0, at - (time.monotonic() - host.began)))
    sent = time.monotonic() - host.began
    host.process.send_signal(sig)
    return host, sent, host.wait(), ck


def artifact_sha(base: Path, normalized: Path, model: Path) -> str:
    root = base / f"merge-{time.monotonic_ns()}"
    (root / "processing/input").mkdir(parents=True)
    (root / "processing/input/shards").symlink_to(model)
    (root / "processing/input/normalized").symlink_to(normalized)
    step("steps.merge", root, ["--execution-id", "bench", "--artifact-uri", "s3://bench/artifact"])
    out = root / "processing/output/artifact"
    digest = hashlib.sha256(b"".join((out / n).read_bytes() for n in ("neighbors.npy", "scores.npy",
                                                                       "neighbors.parquet"))).hexdigest()
    shutil.rmtree(root)
    return digest


def rows_of(host: Host, match: re.Match) -> int:
    """The host's rows a 'N of M steps done' stands for (a finished pass: all of them)."""
    total = max(int(m[2]) for _, m in host.times(PROGRESS))
    return total if match[1] is None else total * int(match[1]) // int(match[2])


def block_seconds(host: Host) -> float:
    """The longest time between two consecutive progress lines: one step of the kernel's work."""
    ts = [t for t, _ in host.times(PROGRESS)]
    return max((b - a for a, b in zip(ts, ts[1:])), default=0.0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--checkpoint-seconds", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (1 min) at the start")
    base = Path(tempfile.mkdtemp(prefix="bench-stops-"))
    try:
        pre = base / "pre"
        (pre / "processing/input/matrix").mkdir(parents=True)
        X = np.random.default_rng(a.seed).standard_normal((a.rows, a.dim), dtype=np.float32)
        np.save(pre / "processing/input/matrix/x.npy", X)
        del X
        step("steps.preprocess", pre, ["--input-uri", "x.npy"])
        normalized = pre / "processing/output/normalized"
        interval = a.checkpoint_seconds

        # 1. uninterrupted
        checkpoints = base / "ck-ref"
        checkpoints.mkdir()
        host, root = start(base, normalized, checkpoints, interval)
        wall = host.wait()
        saves = [t for t, m in host.times(CHECKPOINT) if m[1] is not None]  # by time (the final one apart)
        final = [t for t, m in host.times(CHECKPOINT) if m[1] is None]
        work_began = host.times(PROGRESS)[0][0] - block_seconds(host) if host.times(PROGRESS) else 0.0
        gaps = [b - a_ for a_, b in zip([work_began] + saves, saves)] or [0.0]
        block = block_seconds(host)
        reference = artifact_sha(base, normalized, root / "model")
        print(f"\n{a.rows} x {a.dim}, 1 host, checkpoint_seconds {interval:g}: {wall:.1f} s wall, one step "
              f"(longest time between progress lines) {block:.2f} s")
        print("checkpoints at (s since start): " + ", ".join(f"{t:.1f}" for t in saves) +
              f"; the pass's final one (its own rows' lists scored) at {final[-1]:.1f}")
        print(f"largest gap between consecutive checkpoints (the first from the first step's start): "
              f"{max(gaps):.2f} s; goal <= {interval:g} + {block:.2f} = {interval + block:.2f} s: "
              f"{'met' if max(gaps) <= interval + block else 'NOT met'}; then {final[-1] - (saves or [work_began])[-1]:.2f} s to the "
              "final one")
        print(f"artifact sha256 (uninterrupted): {reference[:16]}")

        # 2. SIGTERM at random moments
        print("\n| SIGTERM at (s) | exited after (s) | rows saved | rows done when signalled |")
        print("|---|---|---|---|")
        for _ in range(a.repeats):
            host, sent, ended, _ = signal_at(base, normalized, interval, rng.uniform(0.5, wall - 0.5), signal.SIGTERM)
            exited = ended - sent
            stopped = host.times(STOPPED)
            saved = rows_of(host, stopped[-1][1]) if stopped else 0
            done = max((int(m[1]) for t, m in host.times(PROGRESS) if t <= sent), default=0)
            print(f"| {sent:.2f} | {exited:.2f} | {saved} | {done} |")

        # 3. kill -9 at random moments, then a restart on the same checkpoints
        print("\n| kill -9 at (s) | seconds lost | rows lost | rows resumed | resumed artifact = uninterrupted |")
        print("|---|---|---|---|---|")
        for _ in range(a.repeats):
            host, killed, _, ck = signal_at(base, normalized, interval, rng.uniform(0.5, wall - 0.5), signal.SIGKILL)
            saved_at = [t for t, _ in host.times(CHECKPOINT) if t <= killed]
            progress = host.times(PROGRESS)
            started = (progress[0][0] - block_seconds(host)) if progress else killed
            lost_seconds = killed - max(saved_at[-1] if saved_at else started, min(started, killed))
            done = max((int(m[1]) for t, m in progress if t <= killed), default=0)
            saved = max((rows_of(host, m) for t, m in host.times(CHECKPOINT) if t <= killed), default=0)
            again, root = start(base, normalized, ck, interval)
            again.wait()
            resumed = sum(rows_of(again, m) for _, m in again.times(RESUMED))
            same = artifact_sha(base, normalized, root / "model") == reference
            print(f"| {killed:.2f} | {lost_seconds:.2f} | {max(done - saved, 0)} | {resumed} | {same} |")
        print(f"\nload average {os.getloadavg()[0]:.2f} (1 min) at the end")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
