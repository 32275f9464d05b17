"""Messages, not tracebacks (issue 11): hostile .npy headers, buffers sized by bytes from the input (a wide matrix,
chunk_rows of 10^12, a row too wide for the budget, CSV lines longer than a parse block), option values starting
with '-', a workdir that is a file, too long, read-only or on a full disk (real ones in a private tmpfs where the
kernel allows it), a disk filling during Preprocess, a corrupt registry."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from steps import preprocess as pre
from tests.brute import brute_force, normalize

REPO = Path(__file__).resolve().parents[1]
from tests.test_preprocess import URI, fails


def manifest_of(inp: Path) -> dict:
    return json.loads((inp.parent.parent / "output/normalized/manifest.json").read_text())


def raw_npy(text: str, version: int = 1) -> bytes:
    header = text.encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY" + bytes([version, 0]) + len(header).to_bytes(2 if version == 1 else 4, "little") + header


def npy_header(shape) -> bytes:
    return raw_npy(f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}") + b"\0" * 64


# ---- hostile .npy headers ---------------------------------------------------------------------------------------

FIX = "re-save it with numpy.save(path, matrix)"


@pytest.mark.parametrize("content, message", [
    (npy_header((-1, 4)), f"x.npy: not a valid .npy file (its header says shape (-1, 4): a negative dimension); {FIX}"),
    (npy_header((-2, -2)), f"x.npy: not a valid .npy file (its header says shape (-2, -2): a negative dimension); {FIX}"),
    (npy_header((2 ** 62, 2 ** 62)),  # the product overflows int64: computed in Python integers
     "x.npy: truncated .npy file: header says shape (4611686018427387904, 4611686018427387904) float32 "
     f"(85070591730234615865843651857942052992 bytes) but the file has 192 bytes; copy it again or {FIX}"),
    (npy_header((10 ** 15, 4)), "x.npy: truncated .npy file: header says shape (1000000000000000, 4) float32 "
                                f"(16000000000000128 bytes) but the file has 192 bytes; copy it again or {FIX}"),
    (b"\x93NUMPY\x02\x00" + (2 ** 31).to_bytes(4, "little") + b"{",  # numpy would read (allocate) 2 GB first
     f"x.npy: not a valid .npy file (its header claims 2147483648 bytes; a .npy header holds at most 10000); {FIX}"),
    (b"\x93NUMPY\x09\x00" + b"\0" * 30, f"x.npy: not a valid .npy file (unknown .npy format version 9.0); {FIX}"),
])
def test_a_hostile_npy_header_is_a_one_line_message(inp, content, message):
    (inp / "x.npy").write_bytes(content)
    assert fails() == message


def test_a_header_with_a_5000_digit_dimension_is_refused_in_a_readable_line(inp):
    (inp / "x.npy").write_bytes(raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (" + "9" * 5000 + ", 4), }"))
    message = fails()
    assert message.startswith("x.npy: not a valid .npy file (Cannot parse header: ")
    assert message.endswith(f"... (5134 characters)); {FIX}") and len(message) < 300


# ---- buffers sized by bytes from the input ------------------------------------------------------------------------


def test_a_wide_matrix_runs_end_to_end_in_chunks_sized_by_bytes(tmp_path):
    """5 x 100,000: the chunk buffer was chunk_rows x D float32 (26 GB, a MemoryError); now each buffer takes at
    most half of preprocess.memory_budget_mb."""
    X = np.random.default_rng(1).standard_normal((5, 100_000)).astype(np.float32)
    X[3] = X[1]
    np.save(tmp_path / "wide.npy", X)
    out = tmp_path / "out"
    assert main(["run", "--spec", str(REPO / "pipeline.yaml"), "--workdir", str(tmp_path / "work"),
                 "--param", f"InputData={tmp_path / 'wide.npy'}", "--param", f"OutputPrefix={out}",
                 "--param", "InstanceCount=2", "--param", "TopK=3"]) == 0
    (artifact,) = out.glob("*/artifact")
    neighbors, scores = brute_force(normalize(X), 3)
    np.testing.assert_array_equal(np.load(artifact / "neighbors.npy"), neighbors)
    (normalized,) = out.glob("*/normalized")
    assert json.loads((normalized / "manifest.json").read_text())["chunk_rows"] == (512 << 20) // 2 // (4 * 100_000)


def test_chunk_rows_of_ten_to_the_twelve_is_a_maximum_not_an_allocation(inp):
    np.save(inp / "x.npy", np.ones((10, 8), np.float32))
    pre.main(["--input-uri", URI, "--chunk-rows", str(10 ** 12)])
    assert manifest_of(inp)["chunk_rows"] == (512 << 20) // 2 // (4 * 8)


def test_a_row_too_wide_for_the_budget_is_refused_before_any_allocation_naming_the_knob(inp):
    np.save(inp / "x.npy", np.ones((1, 300_000), np.float32))
    assert fails("--memory-budget-mb", "16") == (
        "a row of 300000 features takes 9.2 MB in Preprocess's buffers (float64, with its working copies), more than "
        "half of preprocess.memory_budget_mb=16 allows; raise preprocess.memory_budget_mb to at least 19 (and "
        "preprocess.instance_type to one with that much memory)")
    assert not (inp.parent.parent / "output/normalized/.partial").exists()


def test_csv_blocks_are_sized_from_the_lines_and_a_much_longer_line_is_named(inp, monkeypatch):
    monkeypatch.setattr("steps.readers.csv.CSV_BLOCK_BYTES", 512)  # as if every line were longer than a block
    names = [f"feature_{i:04d}" for i in range(120)]
    rows = [",".join(["r" + str(r)] + [f"{(r + j) % 7 / 7:.6f}" for j in range(120)]) for r in range(4)]
    (inp / "m.csv").write_text(",".join(["id", *names]) + "\n" + "\n".join(rows) + "\n")
    pre.main(["--input-uri", URI])  # lines of ~1.4 KB in 512-byte blocks: pyarrow used to fail on them
    assert manifest_of(inp)["rows"] == 4
    long = rows[2].replace(",", ", " + " " * 40)  # a row five times as long as the first ones
    (inp / "m.csv").write_text(",".join(["id", *names]) + "\n" + "\n".join(rows[:2] + [long, rows[3]]) + "\n")
    block = 2 * len(",".join(["id", *names]) + "\n")
    assert fails() == (f"m.csv: a line is more than {block} bytes long, over twice as long as the first row; give "
                       "every row the same columns (a stray line break or quote?), or save the matrix as .npy or "
                       ".parquet")


# ---- option values that start with '-' ------------------------------------------------------------------------------


def test_every_container_argument_is_one_name_equals_value():
    from pipeline import api

    definition = json.loads(api.load(REPO / "pipeline.yaml")[1])
    for step in definition["Steps"]:
        for argument in (step["Arguments"].get("AppSpecification") or {}).get("ContainerArguments") or []:
            first = argument if isinstance(argument, str) else argument["Std:Join"]["Values"][0]
            assert first.startswith("--") and first.index("=") > 2, (step["Name"], argument)


def test_an_id_column_named_like_an_option_reaches_preprocess_as_a_value(tmp_path):
    """`--id-column --help` would have printed Preprocess's help and exited 0 with no output."""
    (tmp_path / "m.csv").write_text("--help,f0,f1\n" + "".join(f"r{i},{i % 3}.5,{i % 5}.25\n" for i in range(6)))
    spec = tmp_path / "pipeline.yaml"
    spec.write_text((REPO / "pipeline.yaml").read_text().replace("  id_column: null", "  id_column: --help"))
    out = tmp_path / "out"
    assert main(["run", "--spec", str(spec), "--workdir", str(tmp_path / "work"), "--param",
                 f"InputData={tmp_path / 'm.csv'}", "--param", f"OutputPrefix={out}", "--param", "InstanceCount=1",
                 "--param", "TopK=2"]) == 0
    (artifact,) = out.glob("*/artifact")
    assert pq.read_table(artifact / "neighbors.parquet").column("id").to_pylist()[:2] == ["r0", "r0"]


# ---- the workdir -------------------------------------------------------------------------------------------------


def run_in(tmp_path, workdir: str) -> int:
    np.save(tmp_path / "x.npy", np.ones((4, 3), np.float32))
    return main(["run", "--spec", str(REPO / "pipeline.yaml"), "--workdir", workdir,
                 "--param", f"InputData={tmp_path / 'x.npy'}", "--param", f"OutputPrefix={tmp_path / 'out'}"])


def test_a_workdir_that_is_a_file_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    assert run_in(tmp_path, str(tmp_path / "file")) == 2
    assert capsys.readouterr().err == (
        f"error: run directory {tmp_path / 'file'}: {tmp_path / 'file/executions'}: Not a directory; a file is in "
        "the way where a folder is needed: move it, or choose another --workdir\n")
    assert (tmp_path / "file").read_text() == "mine"


def test_a_workdir_too_long_is_refused_in_one_line(tmp_path, capsys):
    long = tmp_path / ("w" * 300)
    assert run_in(tmp_path, str(long)) == 2
    assert capsys.readouterr().err == (f"error: run directory {long}: {long}/executions: File name too long; the path "
                                       "is too long: choose a shorter --workdir\n")


def private_tmpfs(options: str, script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run `script` (sh) with a fresh tmpfs mounted at tmp/mnt in a mount namespace of its own: a real full or
    read-only disk, seen by this one process tree only. Skips where the kernel does not allow it."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not shutil.which("unshare"):
        pytest.skip("no unshare(1) here")
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {mnt}"],
                           capture_output=True)
    if probe.returncode:
        pytest.skip(f"no private mounts here: {probe.stderr.decode().strip()}")
    return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o {options} tmpfs {mnt} && {script}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def pipeline_run(tmp_path: Path, *params: str) -> str:
    data = tmp_path / "X.npy"
    return " ".join([sys.executable, "-m", "pipeline", "run", "--workdir", f"{tmp_path}/mnt/work",
                     "--param", f"InputData={data}", "--param", f"OutputPrefix={tmp_path}/mnt/out", *params])


LEFT_BEHIND = "find {mnt} -name '*partial*' -o -name '.*.tmp' -o -name '.staging'"


def test_a_disk_filling_during_preprocess_is_one_line_and_leaves_nothing_half_written(tmp_path):
    np.save(tmp_path / "X.npy", np.random.default_rng(0).standard_normal((20_000, 64)).astype(np.float32))
    done = private_tmpfs("size=2m", f"{pipeline_run(tmp_path, '--param', 'InstanceCount=1')}; echo rc=$?; "
                                    f"{LEFT_BEHIND.format(mnt=tmp_path / 'mnt')}; "
                                    f"grep -h '^  \"status\"' {tmp_path}/mnt/work/executions/*/execution.json",
                         tmp_path)
    lines = done.stdout.splitlines()
    assert lines == ["rc=1", '  "status": "Failed",'], done.stdout  # no partial or temporary file left
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"error: step Preprocess, host algo-1 failed: preprocess: {tmp_path}/mnt/work/executions/")
    assert "/.partial/chunks/chunk-000000.npy: No space left on device; the disk is full: give the job more storage " \
           "(volume_gb of the step in pipeline.yaml), or free space where a local run writes (its --workdir and " \
           "output location) (log: " in last


def test_a_full_disk_in_any_step_is_its_one_line_reason_and_nothing_is_left_half_written(inp, monkeypatch):
    """Where private mounts are not allowed, the same failure injected at the writes (errno as the OS sets it)."""
    import errno
    import os

    from steps.formats import normalized

    real, calls = normalized.write_npy, []

    def full_disk(path, array):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as f:
                f.write(b"half")  # what a write cut short leaves, and what atomic_path must not let appear
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, array)

    monkeypatch.setattr(normalized, "write_npy", full_disk)
    np.save(inp / "x.npy", np.ones((30, 4), np.float32))
    assert pre.run(["--input-uri", URI, "--chunk-rows", "10"]) == 1
    out = inp.parent.parent / "output"
    assert (inp.parent.parent.parent / "output/message").read_text() == (
        f"preprocess: {calls[1]}: No space left on device; the disk is full: give the job more storage (volume_gb "
        "of the step in pipeline.yaml), or free space where a local run writes (its --workdir and output "
        "location)\n")
    assert list((out / "normalized").iterdir()) == []  # the staging folder is gone, no manifest, no chunk


@pytest.mark.parametrize("options, reason, fix", [
    ("size=8k", "No space left on device", "the disk is full: free space, or choose a --workdir (or output "
                                           "location) on another disk"),
    ("ro,size=8k", "Read-only file system", "the file system is read-only: choose a writable --workdir"),
])
def test_a_workdir_on_a_full_or_read_only_disk_is_one_line_and_leaves_no_execution(tmp_path, options, reason, fix):
    np.save(tmp_path / "X.npy", np.ones((4, 3), np.float32))
    done = private_tmpfs(options, f"{pipeline_run(tmp_path)}; echo rc=$?; ls -A {tmp_path}/mnt/work/executions "
                                  "2>/dev/null", tmp_path)
    assert done.stdout.splitlines() == ["rc=2"], done.stdout  # no execution directory without its record
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: run directory {tmp_path}/mnt/work: {tmp_path}/mnt/work")
    assert line.endswith(f": {reason}; {fix}")


# ---- a corrupt registry ------------------------------------------------------------------------------------------


def test_a_corrupt_registry_is_one_line_for_the_registry_command_and_for_a_run(tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "registry.sqlite").write_bytes(b"not a database " * 100)
    expected = (f"local registry {work / 'registry.sqlite'}: file is not a database; if it is damaged, move it aside "
                f"(mv {work / 'registry.sqlite'} {work / 'registry.sqlite'}.damaged) and run again to start a new "
                "one; else check that it is a writable SQLite file")
    assert main(["registry", "--workdir", str(work)]) == 1
    assert capsys.readouterr().err == f"error: {expected}\n"
    assert run_in(tmp_path, str(work)) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"error: step Register, host algo-1 failed: register: {expected} (log: ")
    (artifact,) = (tmp_path / "out").glob("*/artifact")
    assert not (artifact / "registration.json").exists()
