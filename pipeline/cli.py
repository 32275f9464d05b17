"""`python -m pipeline <command>`: parse the command line, call pipeline/api.py, print, map errors to exit codes.

Errors print one line, `error: <message>`, and exit 2 (spec/usage) or 1 (run failure); --verbose adds the traceback.
Every line goes out through `printable`: a value holding a newline or a terminal escape (an OutputPrefix, a file
name in the input) cannot start a line of its own (a forged `error:`) or drive the terminal.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import traceback
from typing import Sequence

from pipeline import api, display
from pipeline.display import printable
from pipeline.errors import AllpairsError, Stopped, UsageError, os_problem

_print_lock = threading.Lock()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args) or 0
    except AllpairsError as exc:
        return fail(str(exc), exc.exit_code, args.verbose)
    except OSError as exc:  # a file the command itself reads or writes: said in one line, like the others
        return fail(os_problem(exc), 1, args.verbose)
    except Stopped as exc:  # Ctrl-C, SIGTERM or SIGHUP during a run
        return fail(exc.reason, exc.exit_code, args.verbose)
    except KeyboardInterrupt:
        return fail("interrupted", 130, args.verbose)


def fail(message: str, code: int, verbose: bool) -> int:
    if verbose:
        traceback.print_exc()
    emit([f"error: {message}"], sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--spec", default="pipeline.yaml", help="the spec file (default: pipeline.yaml)")
    common.add_argument("--verbose", action="store_true", help="show tracebacks, and every host's output when running")
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="allpairs: top-k cosine neighbours of every row")
    parser.add_argument("--version", action="version", version=api.version())
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    validate = commands.add_parser("validate", parents=[common], help="check the spec and compile it (no AWS calls)")
    validate.set_defaults(handler=cmd_validate)

    definition = commands.add_parser("definition", parents=[common], help="print the compiled pipeline definition JSON")
    definition.set_defaults(handler=cmd_definition)

    run = commands.add_parser("run", parents=[common], help="run the pipeline on this machine (no AWS, no Docker)")
    run.add_argument("--param", action="append", default=[], metavar="Name=value", help="override a parameter (repeatable)")
    run.add_argument("--workdir", help="run directory (default: the spec's local.workdir)")
    run.add_argument("--resume", metavar="EXECUTION_ID",
                     help="finish a Stopped or Failed execution: finished steps are kept, Similarity resumes from its checkpoints")
    run.set_defaults(handler=cmd_run)

    plan = commands.add_parser("plan", parents=[common], help="size the job: memory, disk, time and cost per instance type")
    plan.add_argument("--param", action="append", default=[], metavar="Name=value", help="override a parameter (repeatable)")
    plan.add_argument("--rows", type=int, help="the matrix's rows (default: read from InputData)")
    plan.add_argument("--dim", type=int, help="its columns (with --rows)")
    plan.add_argument("--k", type=int, help="neighbours per row (default: TopK)")
    plan.add_argument("--density", type=float, default=1.0, help="share of nonzero values: sizes a sparse input (default 1)")
    plan.add_argument("--hours", type=float, help="finish the similarity step within this (default: half its max runtime)")
    plan.add_argument("--gflops-per-core", type=float, help="skip the calibration: the kernel's GFLOP/s per core")
    plan.add_argument("--cloud", action="store_true", help="the spec's cloud parameters, not local.parameters")
    plan.add_argument("--all-types", action="store_true", help="every type in steps/instances.json, not instance_types")
    plan.add_argument("--region", help="AWS region, to read an s3:// input (default: as the cloud commands)")
    plan.add_argument("--profile", help="AWS profile, to read an s3:// input")
    plan.set_defaults(handler=cmd_plan)

    registry = commands.add_parser("registry", parents=[common],
                                   help="the registered artifact versions: list, show, approve, reject")
    registry.add_argument("action", nargs="?", choices=["list", "show", "approve", "reject"], default="list")
    registry.add_argument("entry", nargs="?", help="show/approve/reject: an ARN, GROUP/VERSION, or VERSION of --group")
    registry.add_argument("--group", help="model package group (list: only this one; default for VERSION: the "
                                          "spec's ModelPackageGroup)")
    registry.add_argument("--workdir", help="run directory (default: the spec's local.workdir)")
    registry.add_argument("--cloud", action="store_true", help="the SageMaker Model Registry, not the local one")
    registry.add_argument("--region", help="with --cloud: AWS region (default: AWS_REGION, then the spec's region)")
    registry.add_argument("--profile", help="with --cloud: AWS profile (default: the usual credential chain)")
    registry.set_defaults(handler=cmd_registry)

    neighbors = commands.add_parser("neighbors", parents=[common], help="the neighbours of ids, from an artifact")
    neighbors.add_argument("artifact", metavar="ARTIFACT_OR_REGISTRY_ENTRY",
                           help="an artifact folder (path or s3://), or a registry entry's ARN")
    neighbors.add_argument("ids", metavar="ID", nargs="+", help="the row ids (as the artifact's ids column holds them)")
    neighbors.add_argument("--k", type=int, help="at most this many per id (default: all the artifact holds)")
    neighbors.add_argument("--format", choices=["table", "csv", "json"], default="table")
    neighbors.add_argument("--workdir", help="run directory of local registry entries (default: the spec's "
                                             "local.workdir)")
    neighbors.add_argument("--profile", help="AWS profile for s3:// and model package ARNs")
    neighbors.set_defaults(handler=cmd_neighbors)

    clean = commands.add_parser("clean", parents=[common], help="remove old or unregistered local executions (a dry "
                                                                "run unless --force)")
    clean.add_argument("--older-than", metavar="AGE", help="executions that ended more than AGE ago: 30d, 12h, 90m")
    clean.add_argument("--unregistered", action="store_true", help="executions no local registry entry points to")
    clean.add_argument("--registered-too", action="store_true",
                       help="with --older-than: also those a registry entry points to (their entries then point "
                            "at nothing)")
    clean.add_argument("--force", action="store_true", help="remove them (without it: only list what would go)")
    clean.add_argument("--workdir", help="run directory (default: the spec's local.workdir)")
    clean.set_defaults(handler=cmd_clean)

    # Cloud commands (pipeline/aws.py; docs/aws.md). Region/profile override the spec and the environment.
    cloud = argparse.ArgumentParser(add_help=False, parents=[common])
    cloud.add_argument("--region", help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, then the spec's region)")
    cloud.add_argument("--profile", help="AWS profile (default: AWS_PROFILE or the default credential chain)")
    cloud.add_argument("--role-arn", help="the pipeline's execution role (default: the spec's role_arn)")

    upsert = commands.add_parser("upsert", parents=[cloud], help="create or update the SageMaker pipeline")
    upsert.set_defaults(handler=cmd_upsert)
    diff = commands.add_parser("diff", parents=[cloud], help="show what upsert would change in the deployed pipeline")
    diff.set_defaults(handler=cmd_diff)
    start = commands.add_parser("start", parents=[cloud], help="start an execution of the deployed pipeline")
    start.add_argument("--param", action="append", default=[], metavar="Name=value", help="override a parameter (repeatable)")
    start.add_argument("--wait", action="store_true", help="follow the execution to its end")
    start.add_argument("--timeout", type=float, help="with --wait: give up following after this many seconds")
    start.set_defaults(handler=cmd_start)
    status = commands.add_parser("status", parents=[cloud], help="an execution's state and its steps' (default: the latest)")
    status.add_argument("execution", nargs="?", help="execution ARN or id")
    status.add_argument("--watch", action="store_true", help="follow it to its end: steps and the hosts' latest metrics")
    status.add_argument("--interval", type=float, default=15.0, help="with --watch: seconds between looks (default 15)")
    status.set_defaults(handler=cmd_status)
    image = commands.add_parser("image", parents=[cloud], help="build the container image, or push it to ECR")
    image.add_argument("action", choices=["build", "push"])
    image.add_argument("--tag", help="image tag (default: the package version)")
    image.add_argument("--repository", default="allpairs", help="ECR repository (default: allpairs; created if missing)")
    image.set_defaults(handler=cmd_image)
    return parser


def cmd_validate(args) -> int:
    emit([api.validate(args.spec)])
    return 0


def cmd_definition(args) -> int:
    print(api.load(args.spec)[1])
    return 0


def cmd_run(args) -> int:
    api.refuse_resume_with_params(args.resume, args.param)
    with display.RunDisplay(verbose=args.verbose) as shown:  # live in a terminal, plain lines elsewhere
        if args.resume is not None:  # `--resume ''` is refused by the resume, not taken for a new run
            execution = api.resume(args.resume, args.spec, args.workdir, shown.echo, shown.say, shown.watch)
        else:
            execution = api.run(args.spec, args.param, args.workdir, shown.echo, shown.say, shown.watch)
    emit(api.run_summary(execution) + display.summary_lines(execution))
    return 0


def cmd_plan(args) -> int:
    emit(api.plan(args.spec, args.param, rows=args.rows, dim=args.dim, k=args.k, density=args.density,
                  hours=args.hours, gflops_per_core=args.gflops_per_core, cloud=args.cloud, all_types=args.all_types,
                  region=args.region, profile=args.profile))
    return 0


def cmd_registry(args) -> int:
    where = {"workdir": args.workdir, "cloud": args.cloud, "region": args.region, "profile": args.profile}
    if args.action == "list":
        if args.entry:
            raise UsageError(f"registry list takes no entry ({args.entry!r}); to see one: registry show {args.entry}")
        source, entries = api.registry_list(args.spec, args.group, **where)
        if not entries:
            emit([f"no entries in {source}" + ("" if args.cloud else ": `python -m pipeline run` registers one")],
                 sys.stderr)
        for entry in entries:
            print(json.dumps(entry, sort_keys=True))
        return 0
    if not args.entry:
        raise UsageError(f"registry {args.action} needs an entry: its ARN, GROUP/VERSION or VERSION "
                         "(`python -m pipeline registry list` shows them)")
    if args.action == "show":
        print(json.dumps(api.registry_show(args.spec, args.entry, args.group, **where), indent=2, sort_keys=True))
        return 0
    status = "Approved" if args.action == "approve" else "Rejected"
    before, after = api.registry_set_status(args.spec, args.entry, status, args.group, **where)
    print(f"{after['model_package_arn']}: {after['approval_status']} (was {before['approval_status']})")
    return 0


def cmd_neighbors(args) -> int:
    frame = api.neighbors(args.artifact, args.ids, args.k, args.spec, args.workdir, args.profile)
    print(format_table(frame, args.format), end="")
    return 0


def format_table(frame, fmt: str) -> str:
    """Scores as the shortest text that reads back to the same float32; ids as they are."""
    import numpy as np

    records = [{**row, "score": float(str(np.float32(row["score"])))} for row in frame.to_dict("records")]
    if fmt == "json":
        return json.dumps([{k: v.item() if hasattr(v, "item") else v for k, v in r.items()} for r in records]) + "\n"
    columns = list(frame.columns)
    if fmt == "csv":
        import csv
        import io

        out = io.StringIO()
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return out.getvalue()
    cells = [columns] + [[str(r[c]) for c in columns] for r in records]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "".join("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                   .rstrip() + "\n" for row in cells)


def cmd_clean(args) -> int:
    planned, removed = api.clean(args.spec, args.workdir, args.older_than, args.unregistered, args.registered_too,
                                 args.force)
    going = [c for c in planned if not c.kept]
    for c in planned:
        if c.kept:
            print(f"kept {c.id} ({c.status}): {c.kept}")
            continue
        done = c.id in removed
        verb = "removed" if done else "would remove" if not args.force else "skipped (started since)"
        print(f"{verb} {c.id} ({c.status}, {c.reason}): {c.bytes / 1e6:.1f} MB")
        for path in c.paths:
            print(f"  {path}")
    size = sum(c.bytes for c in going if not args.force or c.id in removed) / 1e6
    if args.force:
        print(f"removed {len(removed)} execution{'s' if len(removed) != 1 else ''}, {size:.1f} MB")
    else:
        print(f"would remove {len(going)} execution{'s' if len(going) != 1 else ''}, {size:.1f} MB; "
              "run again with --force to remove them" if going else "nothing to remove")
    return 0


def say(line: str) -> None:
    with _print_lock:  # hosts' output threads share stderr: whole lines only
        emit([line], sys.stderr)


def emit(lines, stream=None) -> None:
    """Print each line, made printable. A closed terminal (the run goes on after SIGHUP) is no error."""
    try:
        for line in lines:
            print(printable(line), file=stream or sys.stdout, flush=True)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------------------
# Cloud commands (pipeline/aws.py through pipeline/api.py)


def cloud(args) -> dict:
    return {"region": args.region, "profile": args.profile, "role_arn": args.role_arn}


def cmd_upsert(args) -> int:
    note, arn, summary = api.upsert(args.spec, **cloud(args))
    if note:
        emit([note], sys.stderr)
    emit([arn, summary])
    return 0


def cmd_diff(args) -> int:
    """Exit 1 when the deployed pipeline differs, 0 when not (as `git diff --exit-code`), so CI can gate on it."""
    name, lines = api.diff(args.spec, **cloud(args))
    emit(lines or [f"no differences: the deployed {name} is this spec's definition"])
    return 1 if lines else 0


def cmd_start(args) -> int:
    target, arn, link = api.start(args.spec, args.param, **cloud(args), say=say)
    emit([arn, link])
    if not args.wait:
        return 0
    final, lines = api.wait(target, arn, say, args.timeout)
    emit(lines)
    return 0 if final == "Succeeded" else 1


def cmd_status(args) -> int:
    if not args.watch:
        emit(api.status(args.spec, args.execution, **cloud(args)))
        return 0
    with display.StatusDisplay() as shown:  # redrawn in a terminal; elsewhere printed when it changes
        final = api.watch_status(args.spec, args.execution, shown.show, args.interval, **cloud(args))
    return 0 if final == "Succeeded" else 1


def cmd_image(args) -> int:
    if args.action == "build":
        emit([api.image_build(args.repository, args.tag)])
        return 0
    emit([api.image_push(args.spec, args.repository, args.tag, say, **cloud(args))])
    return 0
