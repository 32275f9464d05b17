"""`python -m pipeline <command>`: each command a few lines calling the library.

Errors print one line, `error: <message>`, and exit 2 (spec/usage) or 1 (run failure); --verbose adds the traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import traceback
from typing import Sequence

from pipeline.compile import ARTIFACT_OUTPUT, MERGE
from pipeline.errors import AllpairsError, UsageError

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
    status.set_defaults(handler=cmd_status)
    image = commands.add_parser("image", parents=[cloud], help="build the container image, or push it to ECR")
    image.add_argument("action", choices=["build", "push"])
    image.add_argument("--tag", help="image tag (default: the package version)")
    image.add_argument("--repository", default="allpairs", help="ECR repository (default: allpairs; created if missing)")
    image.set_defaults(handler=cmd_image)
    return parser


def load(args):
    from pipeline.compile import compile_definition
    from pipeline.spec import load_spec

    spec = load_spec(args.spec)
    return spec, compile_definition(spec)


def spec_overrides(spec) -> list:
    """The spec's local.parameters as overrides whose errors point at their line in the spec."""
    from pipeline.local import ParameterOverride

    return [
        ParameterOverride(name, value, f"{spec.where(f'local.parameters.{name}')}: local.parameters.{name}")
        for name, value in spec.local_parameters().items()
    ]


def cmd_validate(args) -> int:
    from pipeline.local import load_definition, plan_steps, resolve_parameters

    spec, text = load(args)
    definition = load_definition(text)
    steps = plan_steps(definition)  # the local runner can interpret everything the compiler emitted
    resolve_parameters(definition, spec_overrides(spec))
    print(f"ok: {args.spec}: pipeline {spec.name}, steps {' -> '.join(s.name for s in steps)}, "
          f"{len(definition.get('Parameters') or [])} parameters")
    return 0


def cmd_definition(args) -> int:
    print(load(args)[1])
    return 0


def cmd_run(args) -> int:
    from pipeline.local import parse_param_args, read_registration, resume_local, run_local

    if args.resume and args.param:
        raise UsageError(f"--resume {args.resume} takes the parameters the execution started with; drop --param "
                         "(or start a new run without --resume)")
    echo = say if args.verbose else None
    if args.resume:
        # The record holds all a resume needs; the spec only supplies the default workdir.
        workdir = args.workdir or load_spec_only(args).local.workdir
        execution = resume_local(args.resume, workdir=workdir, echo=echo, progress=say)
    else:
        spec, text = load(args)
        overrides = spec_overrides(spec) + parse_param_args(args.param)
        execution = run_local(text, overrides, workdir=args.workdir or spec.local.workdir, pipeline_name=spec.name,
                              region=spec.region, echo=echo, progress=say, value_problem=spec.value_problem(local=True))
    artifact = execution.output_uri(MERGE, ARTIFACT_OUTPUT)
    print(f"artifact: {artifact}")
    registration = read_registration(artifact)
    if registration:
        print(f"registered: {registration.get('model_package_arn')} ({registration.get('approval_status')})")
    print(f"record: {execution.record_path}")
    return 0


def cmd_registry(args) -> int:
    from pathlib import Path

    from pipeline.local import REGISTRY_FILE
    from steps.registry import list_local

    workdir = Path(args.workdir) if args.workdir else load_spec_only(args).local.workdir
    path = workdir / REGISTRY_FILE
    if not path.exists():
        print(f"no local registry at {path} yet: `python -m pipeline run` creates it", file=sys.stderr)
        return 0
    for entry in list_local(path, args.group):
        print(json.dumps(entry, sort_keys=True))
    return 0


def load_spec_only(args):
    from pipeline.spec import load_spec

    return load_spec(args.spec)


def say(line: str) -> None:
    with _print_lock:  # hosts' output threads share stderr: whole lines only
        print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# Cloud commands: each a few lines calling pipeline.aws


def connect(args, spec):
    from pipeline import aws

    return aws.connect(spec, region=args.region, profile=args.profile, role_arn=args.role_arn)


def cmd_upsert(args) -> int:
    from pipeline import aws

    spec, text = load(args)
    aws.check_publishable(spec, args.role_arn or spec.role_arn)
    target = connect(args, spec)
    arn, summary = aws.upsert(target, spec, text)
    note = aws.mutable_tag_note(spec.image)
    if note:
        print(note, file=sys.stderr)
    print(arn)
    print(summary)
    return 0


def cmd_diff(args) -> int:
    from pipeline import aws

    spec, text = load(args)
    lines = aws.diff(connect(args, spec), spec, text)
    print("\n".join(lines) if lines else f"no differences: the deployed {spec.name} is this spec's definition")
    return 0


def cmd_start(args) -> int:
    from pipeline import aws
    from pipeline.local import parse_param_args

    spec, text = load(args)
    overrides = parse_param_args(args.param)
    target = connect(args, spec)
    arn, link = aws.start(target, spec, overrides, text)
    print(arn)
    print(link)
    if not args.wait:
        return 0
    final = aws.wait(target, arn, say, timeout=args.timeout)
    print("\n".join(aws.status(target, arn).lines()))
    return 0 if final == "Succeeded" else 1


def cmd_status(args) -> int:
    from pipeline import aws

    spec = load_spec_only(args)
    target = connect(args, spec)
    state = aws.status(target, aws.execution_arn(target, spec, args.execution))
    print("\n".join(state.lines()))
    return 0


def cmd_image(args) -> int:
    from pipeline import image

    spec = load_spec_only(args)
    tag = args.tag or image.default_tag()
    if args.action == "build":
        print(image.build(args.repository, tag))
        return 0
    target = connect(args, spec)
    print(image.push(target, args.repository, tag, say))
    return 0
