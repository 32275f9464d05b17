"""One processing job or one training job, run locally the way SageMaker runs it in the cloud."""
from __future__ import annotations

import os
import re
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.errors import LocalRunError
from steps.io import write_json
from steps.contract import FAILURE_FILES, HOST_FAULT_ENV, OPT_ML, OPT_ML_ENV, PROCESSING, TRAINING, TRAINING_JOB_ENV

from pipeline.definition.expressions import bug, expression_kind
from pipeline.spec.parameters import LOCAL_MAX_HOSTS
from .faults import Fault, host_faults
from .hosts import Echo, HostCommand, HostResult, core_shares, pinned, run_hosts
from .lock import ExecutionLock
from .watch import Watch
from pipeline.definition.graph import StepPlan, output_uri_property
from .storage import (deliver_file, deliver_tree, download_prefix, files_under, is_s3, join_uri, local_path, stage_input,
                      upload_tree)

# The image's `train` (containers/ maps it to this module); locally it runs with this interpreter.
TRAIN_MODULE = "steps.similarity"
FULLY_REPLICATED, SHARDED_BY_S3_KEY = "FullyReplicated", "ShardedByS3Key"  # S3DataDistributionType


@dataclass
class JobContext:
    step_dir: Path  # <execution>/<step>/: the hosts' roots and staged channels live here
    job_name: str
    cwd: Path  # where relative local URIs were resolved: the processes run there too
    env: dict[str, str]  # the environment every host starts from
    echo: Echo | None = None
    host_results: list[HostResult] = field(default_factory=list)  # filled in as the hosts end
    faults: list[Fault] = field(default_factory=list)  # ALLPAIRS_FAULTS (pipeline/local/faults.py)
    lock: ExecutionLock | None = None  # the execution's lock: every host inherits it (pipeline/local/lock.py)
    published: list[str] = field(default_factory=list)  # the URIs this job's outputs were published at
    watch: Watch | None = None  # told every host's lines, memory and end (the live display)


def job_name(pipeline_name: str, plan: StepPlan, suffix: str) -> str:
    """`allpairs-similarity-3f9a1c`: a SageMaker-valid name (63 chars, [a-z0-9-]) tied to the execution."""
    arguments = plan.arguments
    base = arguments.get("ProcessingJobName") or arguments.get("TrainingJobName") or default_job_base(pipeline_name, plan.name)
    base = re.sub(r"[^a-z0-9-]+", "-", str(base).lower()).strip("-") or "job"
    return f"{base[:63 - len(suffix) - 1]}-{suffix}"


def default_job_base(pipeline_name: str, step: str) -> str:
    # Pipeline "allpairs-similarity", step "Similarity": "allpairs-similarity", not "...-similarity-similarity".
    stutter = pipeline_name.lower().endswith(f"-{step.lower()}")
    return pipeline_name if stutter else f"{pipeline_name}-{step}"


def host_path(root: Path, container_path: object, where: str) -> Path:
    """/opt/ml/x inside the container -> <root>/x on this machine."""
    if isinstance(container_path, str) and (container_path == OPT_ML or container_path.startswith(OPT_ML + "/")):
        return root / container_path[len(OPT_ML):].lstrip("/")
    raise bug(where, f"LocalPath {container_path!r} is not under {OPT_ML}, the only tree the local runner re-roots")


def command_argv(entrypoint: Sequence, arguments: Sequence, where: str) -> list[str]:
    """The container's command; `python3`/`python` is this interpreter (the image's python has our packages)."""
    argv = list(entrypoint) + list(arguments)
    for i, arg in enumerate(argv):
        if not isinstance(arg, str):
            raise bug(f"{where}, command[{i}]", f"resolved to {arg!r}, not a string")
    if argv and argv[0] in ("python3", "python"):
        argv[0] = sys.executable
    return argv


def host_env(ctx: JobContext, environment: Mapping | None, root: Path) -> dict[str, str]:
    env = dict(ctx.env)
    env.update({key: str(value) for key, value in (environment or {}).items()})
    env[OPT_ML_ENV] = str(root)
    return env


def resource_config(host: str, hosts: list[str]) -> dict:
    return {"current_host": host, "hosts": hosts, "network_interface_name": "eth0"}


def input_fix(raw_uri: object) -> str:
    """How to fix a missing input, from what the S3Uri was written as in the definition."""
    if expression_kind(raw_uri) == "Get" and str(raw_uri["Get"]).startswith("Parameters."):
        name = raw_uri["Get"].split(".", 1)[1]
        return f"point --param {name}=PATH (or the spec's local parameters) at an existing file or directory"
    if expression_kind(raw_uri) == "Get" and str(raw_uri["Get"]).startswith("Steps."):
        return f"the step {raw_uri['Get'].split('.')[1]} should have written it: check its log"
    return "check that location"


def raise_if_failed(step: str, results: Sequence[HostResult]) -> None:
    failed = [r for r in results if r.exit_code not in (0, None)]
    if failed:
        first = failed[0]
        raise LocalRunError(f"step {step}, host {first.host} failed: {first.reason} (log: {first.log})")


# ---- processing ---------------------------------------------------------------------------------------------


def check_encryption_flag(value: object, where: str) -> None:
    """EnableInterContainerTrafficEncryption: locally the hosts are processes of one machine and exchange nothing
    over a network, so there is nothing to encrypt; the value is still checked as the API checks it."""
    if value is not None and not isinstance(value, bool):
        raise bug(where, f"EnableInterContainerTrafficEncryption resolved to {value!r}, not a boolean")


def run_processing(plan: StepPlan, args: Mapping, ctx: JobContext) -> dict[str, object]:
    where = f"step {plan.name}"
    check_encryption_flag((args.get("NetworkConfig") or {}).get("EnableInterContainerTrafficEncryption"), where)
    count = ((args.get("ProcessingResources") or {}).get("ClusterConfig") or {}).get("InstanceCount", 1)
    if count != 1:
        raise LocalRunError(f"{where}: ProcessingResources.ClusterConfig.InstanceCount is {count}; processing runs "
                            f"locally on 1 instance: set it to 1")
    root = ctx.step_dir / "algo-1"
    write_json(root / "config" / "processingjobconfig.json", {**args, "ProcessingJobName": ctx.job_name})
    write_json(root / "config" / "resourceconfig.json", resource_config("algo-1", ["algo-1"]))
    raw_inputs = plan.arguments.get("ProcessingInputs") or []
    for spec, raw in zip(args.get("ProcessingInputs") or [], raw_inputs):
        stage_processing_input(spec, raw, root, where)
    outputs = (args.get("ProcessingOutputConfig") or {}).get("Outputs") or []
    for output in outputs:
        host_path(root, output["S3Output"]["LocalPath"], f"{where}, output {output['OutputName']}").mkdir(parents=True, exist_ok=True)
    app = args.get("AppSpecification") or {}
    argv = command_argv(app.get("ContainerEntrypoint") or [], app.get("ContainerArguments") or [], where)
    if not argv:
        raise bug(f"{where}, Arguments.AppSpecification", "no ContainerEntrypoint, and locally there is no image to fall back on")
    command = HostCommand("algo-1", f"{plan.name} algo-1", argv, host_env(ctx, args.get("Environment"), root), root,
                          FAILURE_FILES[PROCESSING], step=plan.name)
    run_hosts([command], ctx.cwd, ctx.echo, collect=ctx.host_results, lock=ctx.lock, watch=ctx.watch)
    raise_if_failed(plan.name, ctx.host_results)
    check_exit_message(plan.name, root)
    properties: dict[str, object] = {"ProcessingJobName": ctx.job_name}
    for i, output in enumerate(outputs):
        name, uri = output["OutputName"], output["S3Output"]["S3Uri"]
        deliver_tree(host_path(root, output["S3Output"]["LocalPath"], ""), uri, f"{where}, output {name}")
        ctx.published.append(uri)
        properties[output_uri_property(name)] = uri
        properties[output_uri_property(i)] = uri
    return properties


def check_exit_message(step: str, root: Path) -> None:
    """SageMaker fails a processing job whose /opt/ml/output/message is not UTF-8 (docs: byoc-metadata)."""
    message = root / FAILURE_FILES[PROCESSING]
    if message.is_file():
        try:
            message.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LocalRunError(f"step {step}, host algo-1: ClientError: {OPT_ML}/{FAILURE_FILES[PROCESSING]} is "
                                f"not UTF-8 ({exc.reason} at byte {exc.start}), which fails a processing job; "
                                "write the message as UTF-8") from None


def stage_processing_input(spec: Mapping, raw: Mapping, root: Path, where: str) -> None:
    where = f"{where}, input {spec.get('InputName')}"
    s3 = spec.get("S3Input")
    if not s3:
        raise bug(where, "only S3Input inputs run locally")
    if s3.get("S3DataType", "S3Prefix") != "S3Prefix" or s3.get("S3CompressionType", "None") != "None":
        raise bug(where, f"S3DataType {s3.get('S3DataType')} / S3CompressionType {s3.get('S3CompressionType')} "
                         f"does not run locally (only S3Prefix, None)")
    if not isinstance(s3.get("S3Uri"), str):
        raise bug(where, f"S3Uri resolved to {s3.get('S3Uri')!r}, not a string")
    fix = input_fix((raw.get("S3Input") or {}).get("S3Uri"))
    stage_input(s3["S3Uri"], host_path(root, s3["LocalPath"], where), where, fix)


# ---- training -----------------------------------------------------------------------------------------------


def run_training(plan: StepPlan, args: Mapping, ctx: JobContext) -> dict[str, object]:
    where = f"step {plan.name}"
    check_encryption_flag(args.get("EnableInterContainerTrafficEncryption"), where)
    hosts = [f"algo-{i}" for i in range(1, instance_count(args, where) + 1)]
    channels = stage_channels(plan, args, ctx, where, hosts)
    shared_checkpoints, checkpoint_uri = prepare_checkpoints(args, ctx, where)
    faults = host_faults(ctx.faults, plan.name, hosts)
    argv = training_argv(args, where)
    commands = []
    for host, cpus in zip(hosts, core_shares(len(hosts))):
        root = ctx.step_dir / host
        prepare_training_host(root, host, hosts, args, channels, shared_checkpoints, where)
        env = pinned(host_env(ctx, args.get("Environment"), root), cpus)
        env[TRAINING_JOB_ENV] = ctx.job_name  # as SageMaker sets it: the shards record their job
        fault = faults.get(host)
        if fault and not fault.timed:
            env[HOST_FAULT_ENV] = fault.condition  # the host triggers it itself (steps/faults.py)
        commands.append(HostCommand(host, f"{plan.name} {host}", argv, env, root, FAILURE_FILES[TRAINING],
                                    (root / "model", root / "output"), fault.timed if fault else None, cpus=cpus,
                                    step=plan.name))
    try:
        run_hosts(commands, ctx.cwd, ctx.echo, {h: f.scope for h, f in faults.items() if f.scope},
                  collect=ctx.host_results, lock=ctx.lock, watch=ctx.watch)
    finally:
        if checkpoint_uri:  # SageMaker syncs checkpoints even for a failed or stopped job: a resume reads them
            upload_tree(shared_checkpoints, checkpoint_uri, f"{where}, checkpoints")
    raise_if_failed(plan.name, ctx.host_results)
    output = args.get("OutputDataConfig") or {}
    artifacts = publish_model({h: ctx.step_dir / h / "model" for h in hosts}, output, ctx, where)
    ctx.published.append(artifacts)
    return {
        "TrainingJobName": ctx.job_name,
        "ModelArtifacts.S3ModelArtifacts": artifacts,
        "OutputDataConfig.S3OutputPath": output.get("S3OutputPath"),
    }


def instance_count(args: Mapping, where: str) -> int:
    count = (args.get("ResourceConfig") or {}).get("InstanceCount")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise LocalRunError(f"{where}: ResourceConfig.InstanceCount is {count!r}; it must be an integer >= 1 "
                            f"(set it with --param InstanceCount=N)")
    if count > LOCAL_MAX_HOSTS:  # whatever definition is run: no thousand processes on this machine
        raise LocalRunError(f"{where}: ResourceConfig.InstanceCount is {count}; a local run starts one process per "
                            f"host, at most {LOCAL_MAX_HOSTS} (set --param InstanceCount=N, or run it in the cloud)")
    return count


def training_argv(args: Mapping, where: str) -> list[str]:
    algorithm = args.get("AlgorithmSpecification") or {}
    entrypoint = algorithm.get("ContainerEntrypoint") or [sys.executable, "-m", TRAIN_MODULE]
    return command_argv(entrypoint, algorithm.get("ContainerArguments") or [], where)


def stage_channels(plan: StepPlan, args: Mapping, ctx: JobContext, where: str,
                   hosts: Sequence[str]) -> dict[str, dict[str, Path]]:
    """Each channel is staged once; each host's channel directory by host. FullyReplicated: every host links to
    that one copy. ShardedByS3Key: each host gets its own directory linking its share of the objects
    (`shard_by_s3_key`)."""
    staged: dict[str, dict[str, Path]] = {}
    raw_channels = plan.arguments.get("InputDataConfig") or []
    for channel, raw in zip(args.get("InputDataConfig") or [], raw_channels):
        name = channel.get("ChannelName")
        here = f"{where}, channel {name}"
        source = (channel.get("DataSource") or {}).get("S3DataSource")
        if not source:
            raise bug(here, "only S3DataSource channels run locally")
        distribution = source.get("S3DataDistributionType", FULLY_REPLICATED)
        if distribution not in (FULLY_REPLICATED, SHARDED_BY_S3_KEY):
            raise bug(here, f"S3DataDistributionType {distribution!r} is neither {FULLY_REPLICATED} nor "
                            f"{SHARDED_BY_S3_KEY}")
        if not isinstance(source.get("S3Uri"), str):
            raise bug(here, f"S3Uri resolved to {source.get('S3Uri')!r}, not a string")
        fix = input_fix(((raw.get("DataSource") or {}).get("S3DataSource") or {}).get("S3Uri"))
        whole = ctx.step_dir / "channels" / name
        stage_input(source["S3Uri"], whole, here, fix)
        if distribution == FULLY_REPLICATED:
            staged[name] = {host: whole for host in hosts}
            continue
        keys = object_keys(whole)
        staged[name] = {}
        for host, share in zip(hosts, shard_by_s3_key(keys, len(hosts))):
            mine = staged[name][host] = ctx.step_dir / "channels" / f"{name}.{host}"
            mine.mkdir(parents=True)
            for key in share:
                (mine / key).parent.mkdir(parents=True, exist_ok=True)
                (mine / key).symlink_to((whole / key).resolve())
    return staged


def object_keys(staged: Path) -> list[str]:
    """The objects of a staged channel as S3 keys relative to its prefix, in S3's order (UTF-8 bytes)."""
    keys = [path.relative_to(staged).as_posix() for path in files_under(staged)]
    return sorted(keys, key=lambda key: key.encode())


def shard_by_s3_key(keys: Sequence[str], hosts: int) -> list[list[str]]:
    """ShardedByS3Key: "If there are n ML compute instances launched for a training job, each instance gets
    approximately 1/n of the number of S3 objects" (API reference, S3DataSource.S3DataDistributionType:
    https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_S3DataSource.html). Objects, not bytes or rows:
    host i of n gets the keys [i*F//n, (i+1)*F//n) of the F in key order, so 20 objects on 6 hosts give 3, 3, 4,
    3, 3, 4, and hosts beyond the objects get none ("some nodes won't get any data", same page). AWS does not
    document which objects go where: the step code never assumes it (each host reads the files it received)."""
    count = len(keys)
    return [list(keys[i * count // hosts:(i + 1) * count // hosts]) for i in range(hosts)]


def prepare_checkpoints(args: Mapping, ctx: JobContext, where: str) -> tuple[Path | None, str | None]:
    """One checkpoint directory shared by every host (SageMaker syncs all hosts to one URI and restores all of it
    to each host). Returns (that directory, the s3 URI to sync it to afterwards, or None)."""
    config = args.get("CheckpointConfig")
    if not config:
        return None, None
    uri = config.get("S3Uri")
    if not isinstance(uri, str):
        raise bug(f"{where}, CheckpointConfig.S3Uri", f"resolved to {uri!r}, not a string")
    if not is_s3(uri):
        shared = local_path(uri)
        shared.mkdir(parents=True, exist_ok=True)
        return shared, None
    shared = ctx.step_dir / "checkpoints"
    download_prefix(uri, shared, f"{where}, checkpoints", "", allow_empty=True)
    return shared, uri


def prepare_training_host(root: Path, host: str, hosts: list[str], args: Mapping,
                          channels: Mapping[str, Mapping[str, Path]],
                          shared_checkpoints: Path | None, where: str) -> None:
    config = root / "input" / "config"
    write_json(config / "resourceconfig.json", resource_config(host, hosts))
    write_json(config / "hyperparameters.json", hyperparameters(args, where))
    write_json(config / "inputdataconfig.json", input_data_config(args))
    for name, by_host in channels.items():
        link = root / "input" / "data" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(by_host[host], target_is_directory=True)
    for directory in ("model", "output/data"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    local = (args.get("CheckpointConfig") or {}).get("LocalPath") or f"{OPT_ML}/checkpoints"
    checkpoints = host_path(root, local, f"{where}, CheckpointConfig")
    checkpoints.parent.mkdir(parents=True, exist_ok=True)
    if shared_checkpoints:
        checkpoints.symlink_to(shared_checkpoints, target_is_directory=True)
    else:
        checkpoints.mkdir(exist_ok=True)


def hyperparameters(args: Mapping, where: str) -> dict[str, str]:
    values = args.get("HyperParameters") or {}
    for key, value in values.items():
        if not isinstance(value, str):
            raise bug(f"{where}, Arguments.HyperParameters.{key}", f"resolved to {value!r}, not a string")
    return dict(values)


def input_data_config(args: Mapping) -> dict:
    mode = (args.get("AlgorithmSpecification") or {}).get("TrainingInputMode", "File")
    config = {}
    for channel in args.get("InputDataConfig") or []:
        source = channel["DataSource"]["S3DataSource"]
        entry = {"TrainingInputMode": channel.get("InputMode", mode), "RecordWrapperType": channel.get("RecordWrapperType", "None"),
                 "S3DistributionType": source.get("S3DataDistributionType", FULLY_REPLICATED)}
        if channel.get("ContentType"):
            entry["ContentType"] = channel["ContentType"]
        config[channel["ChannelName"]] = entry
    return config


def gather_model_files(model_dirs: Mapping[str, Path], where: str) -> dict[str, Path]:
    """Every host's model/ files by relative name. SageMaker would silently keep one of two same-named files:
    here that is an error."""
    owner: dict[str, str] = {}
    files: dict[str, Path] = {}
    for host, model_dir in model_dirs.items():
        for path in files_under(model_dir):
            relative = path.relative_to(model_dir).as_posix()
            if relative in owner:
                raise LocalRunError(
                    f"{where}: hosts {owner[relative]} and {host} both wrote model/{relative}; SageMaker would keep only "
                    f"one of them: make model file names host-unique (use current_host from resourceconfig.json)"
                )
            owner[relative], files[relative] = host, path
    return dict(sorted(files.items()))


def publish_model(model_dirs: Mapping[str, Path], output: Mapping, ctx: JobContext, where: str) -> str:
    """Gather the hosts' model files into <S3OutputPath>/<job>/output/model/ (or model.tar.gz with GZIP)."""
    files = gather_model_files(model_dirs, where)
    base = join_uri(str(output.get("S3OutputPath")), ctx.job_name, "output")
    if output.get("CompressionType", "GZIP") == "NONE":
        gathered = ctx.step_dir / "model"
        for relative, path in files.items():
            (gathered / relative).parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, gathered / relative)
        uri = join_uri(base, "model")
        deliver_tree(gathered, uri, f"{where}, model")
        return uri
    archive = ctx.step_dir / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for relative, path in files.items():
            tar.add(path, arcname=relative)
    uri = join_uri(base, "model.tar.gz")
    deliver_file(archive, uri, f"{where}, model")
    return uri
