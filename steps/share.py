"""A similarity host's share of the work: which passes it computes and which finished work it reuses, running
them with checkpoints by time and prompt stops, and writing its shard.

The plan (from resourceconfig.json alone): the host's block rows of the grid (steps/kernel/grid.py), in passes
whose candidate heaps fit the memory budget (steps/kernel/blocking.py). Before computing, the shared
checkpoint directory (steps/formats/checkpoints.py) is read:
- a pass whose own checkpoints say it is done is not computed: its lists are copied into the shard;
- a pass with a state resumes from it (the lists it vouches for are kept);
- a finished pass of another plan (the job ran before with another InstanceCount) that overlaps this host's
  block rows is reused whole: those block rows are not computed again, and its lists go into the shard of the
  host that holds its first block row. Where such passes overlap each other, the first ones in block order win
  (every host reads the same directory, so every host picks the same ones).

Stops: SIGTERM (spot's warning, StopTrainingJob) only sets a flag here; the pass in progress pauses within its
step (the products running finish, milliseconds each; the queued ones are dropped), checkpoints where it is,
and the host exits with the stop recorded. A kill loses at most the work since the last checkpoint.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .contract import BLOCK_ROWS_ENV, CHECKPOINT_FORMAT, TRAINING_JOB_ENV, Host
from .errors import Terminated
from .faults import read_fault
from .formats import checkpoints, shards
from .kernel import Corpus, Grid, KernelConfig, Pass, PartialList, Paused, Snapshot, host_passes
from .kernel.queries import QueryPass, query_passes, query_width
from .progress import Progress

Log = Callable[[str], None]


@dataclass
class Work:
    """One item of a host's plan: a pass to compute (maybe resumed from `record`), or finished lists to reuse."""

    blocks: range
    record: checkpoints.PassRecord | None = None  # this pass's latest state, if any
    reuse_only: bool = False  # a finished pass (this plan's or another's): copy its lists, compute nothing


def plan_work(grid: Grid, host: Host, config: KernelConfig, dim: int,
              records: dict[tuple[int, int], checkpoints.PassRecord]) -> list[Work]:
    hosts = len(host.hosts)
    mine = host_passes(grid, host.index, hosts, config, dim)
    current = {(p.start, p.stop) for h in range(hosts) for p in host_passes(grid, h, hosts, config, dim)}
    # Finished passes of other plans, the first in block order winning where they overlap.
    foreign, taken = [], set()
    for key in sorted(k for k, r in records.items() if r.done and k not in current):
        blocks = set(range(*key))
        if not blocks & taken:
            foreign.append(records[key])
            taken |= blocks
    own = grid.host_blocks(host.index, hosts)
    work = [Work(r.blocks, r, reuse_only=True) for r in foreign if r.blocks.start in own]
    for p in mine:
        left = [b for b in p if b not in taken]
        if len(left) == len(p):
            record = records.get((p.start, p.stop))
            work.append(Work(p, record, reuse_only=bool(record and record.done)))
            continue
        for run in _runs(left):  # the pass's block rows that no finished pass holds, fresh
            work.append(Work(run))
    return work


def _runs(blocks: list[int]) -> list[range]:
    runs: list[range] = []
    for b in blocks:
        if runs and runs[-1].stop == b:
            runs[-1] = range(runs[-1].start, b + 1)
        else:
            runs.append(range(b, b + 1))
    return runs


class _StopFlag:
    """SIGTERM sets it (in the main thread, while the host computes): the pass stops at its next step."""

    def __init__(self):
        self.set = False

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: setattr(self, "set", True))
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)


def compute(corpus: Corpus, fingerprint: str, host: Host, config: KernelConfig, out_dir: Path,
            checkpoint_dir: Path | None, log: Log, top_k: int | None = None) -> dict:
    """Plan, compute and write this host's shard; returns its metadata. `top_k`: the TopK asked, when config.k
    was lowered to what the rows can have."""
    began, cpu_began = time.time(), time.process_time()
    grid = Grid.for_rows(corpus.rows, int(os.environ.get(BLOCK_ROWS_ENV) or 0) or None)
    zero = corpus.zero_mask()
    width = min(config.width, max(corpus.rows - 1, 1))
    expected = {"format": CHECKPOINT_FORMAT[0], "version": CHECKPOINT_FORMAT[1], "fingerprint": fingerprint,
                "k": config.k, "min_score": config.threshold, "grid": grid.describe(), "width": width}
    store = None
    records: dict = {}
    if checkpoint_dir is not None:
        key = checkpoints.checkpoint_key(fingerprint, config.k, config.threshold, grid.describe(), width)
        store = checkpoints.Store(checkpoint_dir, key, expected, log, read_fault())
        records = store.scan(host_passes(grid, host.index, len(host.hosts), config, corpus.width))
    work = plan_work(grid, host, config, corpus.width, records)
    passes = {}
    for w in work:
        if w.reuse_only:
            log(f"reusing the finished pass of block rows [{w.blocks.start}, {w.blocks.stop}) from checkpoints")
            continue
        passes[id(w)] = p = Pass(corpus, grid, w.blocks, config, zero)
        if w.record is not None:
            _resume(p, w, log)
    old_rows = sum(item.stop - item.start for w in work if w.record for item in w.record.lists)
    total_rows = old_rows + sum(p.list_rows() for p in passes.values())
    steps = sum(len(p.steps) for p in passes.values())
    resumed = sum(p.next_step for p in passes.values())
    # Progress in rows of this host's block rows, each step worth its share; a row costs about N x dim pairs'
    # products (each pair once: half of its N columns), 2 flops each.
    rows = sum(min(corpus.rows, b.stop * grid.block) - b.start * grid.block for b in
               (p.blocks for p in passes.values()))
    progress = _Steps(Progress(rows, 1.0 * corpus.rows * corpus.width, log), rows, steps, resumed)
    writer = _run_work(work, passes, store, out_dir, host, total_rows, config.k, progress, log)
    return shards.write_meta(out_dir, writer, host.hosts, grid.describe(), config.threshold, fingerprint,
                             os.environ.get(TRAINING_JOB_ENV), resumed, round(time.time() - began, 3),
                             round(time.process_time() - cpu_began, 3), top_k, corpus.kernel)


def _run_work(work: list[Work], passes: dict, store, out_dir: Path, host: Host, total_rows: int, k: int,
              progress: "_Steps", log: Log) -> shards.ShardWriter:
    """Run (or copy from checkpoints) every pass of `work` into this host's shard, checkpointing by time and
    pausing on SIGTERM; returns the closed writer, whose lists the shard's metadata then vouches for."""
    interval = checkpoints.read_interval()
    stop = _StopFlag()
    with contextlib.ExitStack() as stack:
        writer = shards.ShardWriter(out_dir, host.name, total_rows, k, stack)
        with stop.installed():
            for w in work:
                if w.reuse_only:
                    _copy(w.record.lists, writer)
                    continue
                _run_pass(passes[id(w)], w, store, writer, interval, progress, stop, log)
    return writer


def _resume(p: Pass, w: Work, log: Log) -> None:
    """Restore the pass from its checkpointed state; one that does not fit it (paused inside a step with other
    product tiles: another instance type) is dropped, with the lists it vouches for, and the pass starts again."""
    where = f"the pass of {getattr(p, 'rows_label', 'block rows')} [{w.blocks.start}, {w.blocks.stop})"
    try:
        p.restore(Snapshot(**w.record.snapshot()))
    except (ValueError, OSError) as exc:
        log(f"not resuming {where} from {w.record.state_path.name}: {exc}; the pass starts again")
        w.record = None
        return
    done = checkpoints.progress_text(p.next_step, len(p.steps), p.products_done)
    log(f"resuming {where} from checkpoints: {done}")


def _copy(lists: list[checkpoints.StoredList], writer: shards.ShardWriter) -> None:
    for item in lists:
        writer.add(item.start, item.stop, item.columns, checkpoints.read_list_rows(item))


class _Steps:
    """Progress counted in steps, reported in rows of the host's block rows (each step worth its share)."""

    def __init__(self, progress: Progress, rows: int, steps: int, done: int):
        self.progress, self.rows, self.steps, self.done = progress, rows, max(steps, 1), done
        progress.resumed(self._rows(done))

    def _rows(self, steps: int) -> int:
        return self.rows * steps // self.steps

    def step(self) -> None:
        self.done += 1
        self.progress.computed_rows(self._rows(self.done) - self._rows(self.done - 1))


def _run_pass(p: Pass, w: Work, store, writer: shards.ShardWriter, interval: float, progress: _Steps,
              stop: _StopFlag, log: Log) -> None:
    """Run one pass (restored already if it resumes), its lists into the shard and its checkpoints."""
    seq, files, pending = 0, [], []
    if w.record is not None:
        _copy(w.record.lists, writer)
        seq, files = w.record.seq + 1, sorted({item.path.name for item in w.record.lists})

    def emit(lists: list[PartialList]) -> None:
        for item in lists:
            writer.add(item.start, item.stop, item.columns, iter([(item.neighbors, item.scores)]))
        pending.extend(lists)

    def checkpoint(done: bool) -> None:
        nonlocal seq
        if store is None:
            pending.clear()
            return
        if pending:
            files.append(store.write_lists(p.blocks, seq, pending))
            pending.clear()
        store.write_state(p.blocks, seq, len(p.steps), None if done else p.snapshot(), files)
        seq += 1

    last = time.monotonic()
    with contextlib.closing(p.run(stop=lambda: stop.set)) as events:
        for event in events:
            if isinstance(event, PartialList):
                emit([event])
                continue
            paused = isinstance(event, Paused)
            last_step = not paused and p.next_step == len(p.steps)  # its own lists and final checkpoint follow
            if paused or (not last_step and (stop.set or (store is not None and time.monotonic() - last >= interval))):
                emit(p.flush())
                checkpoint(done=False)
                last = time.monotonic()
            if not paused:
                progress.step()  # after its checkpoint: a step reported is a step saved (checkpoint_seconds 0)
            if stop.set and not last_step:
                saved = "all of it is in checkpoints and a restart resumes from there" if store else \
                    "no checkpoint directory (/opt/ml/checkpoints), so a restart starts again"
                raise Terminated(f"the pass of {getattr(p, 'rows_label', 'block rows')} [{p.blocks.start}, "
                                 f"{p.blocks.stop}) stopped with "
                                 f"{checkpoints.progress_text(p.next_step, len(p.steps), p.products_done)}; {saved}")
    checkpoint(done=True)


# ---- queries mode ----------------------------------------------------------------------------------------------


def compute_queries(corpus: Corpus, fingerprint: str, chunks: list, host: Host, config: KernelConfig, out_dir: Path,
                    checkpoint_dir: Path | None, log: Log, top_k: int | None = None) -> dict:
    """Queries mode: the query chunk files this host received (steps/formats/queries.py QueryChunk, any of
    them, maybe none), each query row against the whole corpus, in passes (steps/kernel/queries.py) run,
    checkpointed and stopped by the same code as the self-join's. In the checkpoints a pass is named by its query
    rows (a grid of blocks of one row over the query rows), so a restart with another InstanceCount, whose hosts
    get other files, still finds every finished pass: passes depend on a file and the budget, not on the host."""
    began, cpu_began = time.time(), time.process_time()
    queries_fingerprint = chunks[0].fingerprint if chunks else None
    rows = chunks[0].rows if chunks else 0
    # A step's corpus rows at most (as a self-join step is one corpus block): in the checkpoints' key with the grid.
    step_rows = Grid.for_rows(corpus.rows, int(os.environ.get(BLOCK_ROWS_ENV) or 0) or None).block
    grid = {"rows": rows, "block": 1, "blocks": rows, "corpus_block": step_rows}
    zero = corpus.zero_mask()
    width = query_width(config.k, corpus.rows)
    work: list[Work] = [Work(r) for c in chunks for r in query_passes(c.start, c.stop, config, corpus.dim, corpus.rows)]
    store = None
    if checkpoint_dir is not None and chunks:
        expected = {"format": CHECKPOINT_FORMAT[0], "version": CHECKPOINT_FORMAT[1], "fingerprint": queries_fingerprint,
                    "k": config.k, "min_score": config.threshold, "grid": grid, "width": width}
        key = checkpoints.checkpoint_key(queries_fingerprint, config.k, config.threshold, grid, width)
        store = checkpoints.Store(checkpoint_dir, key, expected, log, read_fault(), QueryPass.rows_label)
        records = store.scan([w.blocks for w in work])
        for w in work:
            w.record = records.get((w.blocks.start, w.blocks.stop))
            w.reuse_only = bool(w.record and w.record.done)
    by_rows = {(c.start, c.stop): c for c in chunks}
    passes = {}
    for w in work:
        if w.reuse_only:
            log(f"reusing the finished pass of query rows [{w.blocks.start}, {w.blocks.stop}) from checkpoints")
            continue
        c = next(c for (a, b), c in by_rows.items() if a <= w.blocks.start and w.blocks.stop <= b)
        lo, hi = w.blocks.start - c.start, w.blocks.stop - c.start
        passes[id(w)] = p = QueryPass(corpus, c.vectors[lo:hi], w.blocks, c.exclude[lo:hi], config, zero, step_rows)
        if w.record is not None:
            _resume(p, w, log)
    total_rows = sum(len(w.blocks) for w in work)
    steps = sum(len(p.steps) for p in passes.values())
    resumed = sum(p.next_step for p in passes.values())
    todo = sum(len(p.blocks) for p in passes.values())
    # A query row costs N x dim products against the corpus, 2 flops each.
    progress = _Steps(Progress(todo, 2.0 * corpus.rows * corpus.dim, log), todo, steps, resumed)
    writer = _run_work(work, passes, store, out_dir, host, total_rows, config.k, progress, log)
    extra = {"mode": "queries", "queries_fingerprint": queries_fingerprint,
             "query_files": [{"file": c.path.name, "start": c.start, "stop": c.stop, "sha256": c.sha256}
                             for c in chunks]}
    return shards.write_meta(out_dir, writer, host.hosts, grid, config.threshold, fingerprint,
                             os.environ.get(TRAINING_JOB_ENV), resumed, round(time.time() - began, 3),
                             round(time.process_time() - cpu_began, 3), top_k, corpus.kernel, extra)
