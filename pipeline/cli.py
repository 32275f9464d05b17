"""`python -m pipeline <command>`: parse the command line, call pipeline/api.py, print, map errors to exit codes.

Errors print one line, `error: <message>`, and exit 2 (spec/usage) or 1 (run failure); --verbose adds the traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import traceback
from typing import Sequence

from pipeline import api, display
from pipeline.errors import AllpairsError

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
    except KeyboardInterrupt:
        return fail("interrupted", 130, args.verbose)


def fail(message: str, code: int, verbose: bool) -> int:
    if verbose:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--spec", default="pipeline.yaml", help="the spec file (default: pipeline.yaml)")
    common.add_argument("--verbose", action="store_true", help="show tracebacks, and every host's output when running")
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="allpairs: top-k cosine neighbours of every row")
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

    registry = commands.add_parser("registry", parents=[common], help="list the local registry's artifact versions")
    registry.add_argument("action", nargs="?", choices=["list"], default="list")
    registry.add_argument("--group", help="only this model package group")
    registry.add_argument("--workdir", help="run directory (default: the spec's local.workdir)")
    registry.set_defaults(handler=cmd_registry)

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
    print(api.validate(args.spec))
    return 0


def cmd_definition(args) -> int:
    print(api.load(args.spec)[1])
    return 0


def cmd_run(args) -> int:
    api.refuse_resume_with_params(args.resume, args.param)
    with display.RunDisplay(verbose=args.verbose) as shown:  # live in a terminal, plain lines elsewhere
        if args.resume:
            execution = api.resume(args.resume, args.spec, args.workdir, shown.echo, shown.say, shown.watch)
        else:
            execution = api.run(args.spec, args.param, args.workdir, shown.echo, shown.say, shown.watch)
    print("\n".join(api.run_summary(execution) + display.summary_lines(execution)))
    return 0


def cmd_plan(args) -> int:
    print("\n".join(api.plan(args.spec, args.param, rows=args.rows, dim=args.dim, k=args.k, density=args.density,
                             hours=args.hours, gflops_per_core=args.gflops_per_core, cloud=args.cloud,
                             all_types=args.all_types, region=args.region, profile=args.profile)))
    return 0


def cmd_registry(args) -> int:
    path, entries = api.registry_entries(args.spec, args.workdir, args.group)
    if not path.exists():
        print(f"no local registry at {path} yet: `python -m pipeline run` creates it", file=sys.stderr)
    for entry in entries:
        print(json.dumps(entry, sort_keys=True))
    return 0


def say(line: str) -> None:
    with _print_lock:  # hosts' output threads share stderr: whole lines only
        print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# Cloud commands (pipeline/aws.py through pipeline/api.py)


def cloud(args) -> dict:
    return {"region": args.region, "profile": args.profile, "role_arn": args.role_arn}


def cmd_upsert(args) -> int:
    note, arn, summary = api.upsert(args.spec, **cloud(args))
    if note:
        print(note, file=sys.stderr)
    print(arn)
    print(summary)
    return 0


def cmd_diff(args) -> int:
    name, lines = api.diff(args.spec, **cloud(args))
    print("\n".join(lines) if lines else f"no differences: the deployed {name} is this spec's definition")
    return 0


def cmd_start(args) -> int:
    target, arn, link = api.start(args.spec, args.param, **cloud(args), say=say)
    print(arn)
    print(link)
    if not args.wait:
        return 0
    final, lines = api.wait(target, arn, say, args.timeout)
    print("\n".join(lines))
    return 0 if final == "Succeeded" else 1


def cmd_status(args) -> int:
    if not args.watch:
        print("\n".join(api.status(args.spec, args.execution, **cloud(args))))
        return 0
    with display.StatusDisplay() as shown:  # redrawn in a terminal; elsewhere printed when it changes
        final = api.watch_status(args.spec, args.execution, shown.show, args.interval, **cloud(args))
    return 0 if final == "Succeeded" else 1


def cmd_image(args) -> int:
    if args.action == "build":
        print(api.image_build(args.repository, args.tag))
        return 0
    print(api.image_push(args.spec, args.repository, args.tag, say, **cloud(args)))
    return 0
