"""Spec -> SageMaker Pipeline -> definition JSON.

The definition is built with zero network calls and is byte-identical for the same spec (see
shared/reference/sagemaker-v3-notes.md, section 1): explicit role ARN, explicit s3:// URIs built with Join,
role validation off, telemetry opted out, no SDK config files read. The step arguments follow
docs/container-contract.md; the local runner (pipeline/local) interprets the very same JSON.

The SDK is imported lazily: importing it costs seconds and needs a region (notes, gotcha 13).
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import warnings
from typing import TYPE_CHECKING, Any, Iterator

from pipeline.errors import AllpairsError, CompileError
from pipeline.limits import check_definition
from pipeline.spec import APPROVAL_STATUSES, PARAMETER_NAMES, Spec

if TYPE_CHECKING:  # pragma: no cover
    import boto3
    from sagemaker.mlops.workflow.pipeline import Pipeline

# Step names are the keys of `Steps.<name>` references: the local runner and the CLI rely on them.
PREPROCESS, SIMILARITY, MERGE, REGISTER = "Preprocess", "Similarity", "Merge", "Register"
STEP_NAMES = (PREPROCESS, SIMILARITY, MERGE, REGISTER)

# Container paths (docs/container-contract.md).
MATRIX_PATH = "/opt/ml/processing/input/matrix"
NORMALIZED_OUT_PATH = "/opt/ml/processing/output/normalized"
SHARDS_PATH = "/opt/ml/processing/input/shards"
NORMALIZED_IN_PATH = "/opt/ml/processing/input/normalized"
ARTIFACT_PATH = "/opt/ml/processing/output/artifact"
ARTIFACT_OUTPUT = "artifact"  # the Merge output holding the product of a run
REGISTER_INPUT_PATH = "/opt/ml/processing/input/artifact"
REGISTRATION_PATH = "/opt/ml/processing/output/registration"
REGISTRATION_OUTPUT = "registration"
CHECKPOINT_PATH = "/opt/ml/checkpoints"

# A config dict instead of the SDK's config files: telemetry off, and nothing from ~/.config/sagemaker or
# /etc/xdg/sagemaker can inject roles, tags, KMS keys or subnets into the definition.
_SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
CHATTY_LOGGERS = ("sagemaker", "botocore", "boto3", "urllib3")  # their INFO lines and warnings: noise to us


def compile_definition(spec: Spec) -> str:
    """The pipeline definition JSON, exactly as `upsert` sends it. No network, deterministic."""
    with _quiet_sdk(spec.region):
        try:
            pipeline = build_pipeline(spec, boto_session=_offline_boto_session(spec.region))
            text = _with_training_job_prefix(pipeline.definition(), spec)  # step arguments are built in here
        except AllpairsError:
            raise
        except Exception as exc:  # a spec value the SDK refuses: one line, not a traceback
            reason = (str(exc).strip().splitlines() or [""])[0]
            raise CompileError(
                f"{spec.where('')}: cannot build the pipeline definition: {type(exc).__name__}: {reason}"
            ) from exc
    check_definition(text, spec.parameters, lambda name: _where_parameter(spec, name))
    return text


def _with_training_job_prefix(text: str, spec: Spec) -> str:
    """Put back the TrainingJobName that ModelTrainer drops under a PipelineSession (aws/sagemaker-python-sdk#5776,
    open in 3.27; notes, gotcha 5). With use_custom_job_prefix the SDK keeps it for processing steps, and the
    service takes it as the job name's prefix, so IAM policies scoped to `<job_name_prefix>-*` match every job."""
    definition = json.loads(text)
    for step in definition["Steps"]:
        if step["Name"] == SIMILARITY:
            step["Arguments"].setdefault("TrainingJobName", f"{spec.job_name_prefix}-similarity")
    return json.dumps(definition)


def _where_parameter(spec: Spec, name: str | None) -> str:
    return f"{spec.where(f'parameters.{name}')}: parameters.{name}" if name else spec.where("")


def build_pipeline(spec: Spec, boto_session: "boto3.Session") -> "Pipeline":
    """The sagemaker Pipeline object. Call it inside _quiet_sdk, as compile_definition does."""
    from sagemaker.core.workflow.pipeline_context import PipelineSession
    from sagemaker.core.workflow.pipeline_definition_config import PipelineDefinitionConfig
    from sagemaker.mlops.workflow.pipeline import Pipeline

    session = PipelineSession(
        boto_session=boto_session,
        sagemaker_config=_SDK_CONFIG,
    )
    params = _parameters(spec)
    preprocess = _preprocess_step(spec, session, params)
    similarity = _similarity_step(spec, session, params, preprocess)
    merge = _merge_step(spec, session, params, preprocess, similarity)
    register = _register_step(spec, session, params, merge)
    return Pipeline(
        name=spec.name,
        parameters=list(params.values()),
        steps=[preprocess, similarity, merge, register],
        sagemaker_session=session,
        # None emits `null`: no Experiments trial per execution (and no region-dependent output).
        pipeline_experiment_config=None,
        # Keeps base_job_name as the processing job name prefix (ignored by ModelTrainer: notes, gotcha 5).
        pipeline_definition_config=PipelineDefinitionConfig(use_custom_job_prefix=True),
    )


# ---------------------------------------------------------------------------------------------------------
# Parameters and paths


def _parameters(spec: Spec) -> dict[str, Any]:
    from sagemaker.core.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString

    d = spec.parameters
    params = {
        "InputData": ParameterString("InputData", default_value=d["InputData"]),
        "OutputPrefix": ParameterString("OutputPrefix", default_value=d["OutputPrefix"]),
        "InstanceCount": ParameterInteger("InstanceCount", default_value=d["InstanceCount"]),
        "InstanceType": ParameterString(
            "InstanceType",
            default_value=d["InstanceType"],
            enum_values=list(spec.instance_types) if spec.instance_types else None,
        ),
        "TopK": ParameterInteger("TopK", default_value=d["TopK"]),
        "MinScore": ParameterFloat("MinScore", default_value=float(d["MinScore"])),
        "ModelPackageGroup": ParameterString("ModelPackageGroup", default_value=d["ModelPackageGroup"]),
        "ApprovalStatus": ParameterString(
            "ApprovalStatus", default_value=d["ApprovalStatus"], enum_values=list(APPROVAL_STATUSES)
        ),
    }
    assert tuple(params) == PARAMETER_NAMES
    return params


def _run_uri(params: dict[str, Any], leaf: str) -> Any:
    """<OutputPrefix>/<PipelineExecutionId>/<leaf>: every execution writes under its own prefix."""
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join

    return Join(on="/", values=[params["OutputPrefix"], ExecutionVariables.PIPELINE_EXECUTION_ID, leaf])


def _s3_input(name: str, uri: Any, local_path: str) -> Any:
    from sagemaker.core.shapes import ProcessingInput, ProcessingS3Input

    return ProcessingInput(
        input_name=name,
        s3_input=ProcessingS3Input(
            s3_uri=uri,
            local_path=local_path,
            s3_data_type="S3Prefix",
            s3_input_mode="File",
            s3_data_distribution_type="FullyReplicated",
        ),
    )


def _s3_output(name: str, uri: Any, local_path: str) -> Any:
    from sagemaker.core.shapes import ProcessingOutput, ProcessingS3Output

    return ProcessingOutput(
        output_name=name,
        s3_output=ProcessingS3Output(s3_uri=uri, local_path=local_path, s3_upload_mode="EndOfJob"),
    )


def _processor(spec: Spec, session: Any, settings: Any, job: str, needs_network: bool) -> Any:
    from sagemaker.core.network import NetworkConfig
    from sagemaker.core.processing import Processor

    sec = spec.security
    return Processor(
        role=spec.role_arn,
        image_uri=spec.image,
        entrypoint=["python3", "-m", f"steps.{job}"],  # the step code is baked into the image: nothing to upload
        instance_count=1,
        instance_type=settings.instance_type,
        volume_size_in_gb=settings.volume_gb,
        volume_kms_key=sec.volume_kms_key,
        output_kms_key=sec.output_kms_key,
        max_runtime_in_seconds=settings.max_runtime_seconds,
        base_job_name=f"{spec.job_name_prefix}-{job}",
        sagemaker_session=session,
        tags=_tags(spec),
        network_config=NetworkConfig(
            enable_network_isolation=sec.network_isolation and not needs_network,
            security_group_ids=list(sec.security_groups) or None,
            subnets=list(sec.subnets) or None,
        ),
    )


def _tags(spec: Spec) -> list[dict[str, str]] | None:
    return [{"Key": key, "Value": value} for key, value in spec.tags.items()] or None


def _capacity_retry(spec: Spec) -> list[Any]:
    """Retry a job that found no capacity (spot or on-demand), waiting longer each time. A retried Similarity
    job runs in the same execution, so it finds the checkpoints of the attempt before (same S3 prefix)."""
    from sagemaker.mlops.workflow.retry import SageMakerJobExceptionTypeEnum, SageMakerJobStepRetryPolicy

    if spec.retry.max_attempts <= 1:
        return []
    return [
        SageMakerJobStepRetryPolicy(
            exception_types=[SageMakerJobExceptionTypeEnum.CAPACITY_ERROR],
            max_attempts=spec.retry.max_attempts,
            interval_seconds=spec.retry.interval_seconds,
            backoff_rate=2.0,
        )
    ]


def _normalized_uri(preprocess: Any) -> Any:
    return preprocess.properties.ProcessingOutputConfig.Outputs["normalized"].S3Output.S3Uri


# ---------------------------------------------------------------------------------------------------------
# Steps


def _preprocess_step(spec: Spec, session: Any, params: dict[str, Any]) -> Any:
    from sagemaker.mlops.workflow.steps import CacheConfig, ProcessingStep

    arguments: list[Any] = [
        "--input-uri", params["InputData"],
        "--non-finite", spec.input.non_finite,
        "--chunk-rows", str(spec.preprocess.chunk_rows),
        # Preprocess knows the rows: more hosts than rows is refused there, before any host is paid for.
        "--instance-count", params["InstanceCount"].to_string(),
    ]  # fmt: skip
    if spec.input.id_column is not None:
        arguments += ["--id-column", spec.input.id_column]
    processor = _processor(spec, session, spec.preprocess, "preprocess", needs_network=False)
    # Caching: the key is the InputData URI and the arguments, not the bytes behind the URI, so a hit is
    # only correct if the user vouches that a URI's content never changes (docs/aws.md, "Step caching").
    cache = CacheConfig(enable_caching=True, expire_after=spec.cache.expire_after) if spec.cache.immutable_inputs else None
    return ProcessingStep(
        name=PREPROCESS,
        display_name=PREPROCESS,  # the public schema allows only [A-Za-z0-9-_] here
        description="Read the input matrix, check for non-finite values, L2-normalize rows, write float32 chunks",
        step_args=processor.run(
            inputs=[_s3_input("matrix", params["InputData"], MATRIX_PATH)],
            outputs=[_s3_output("normalized", _run_uri(params, "normalized"), NORMALIZED_OUT_PATH)],
            arguments=arguments,
        ),
        cache_config=cache,
        retry_policies=_capacity_retry(spec),
    )


def _similarity_step(spec: Spec, session: Any, params: dict[str, Any], preprocess: Any) -> Any:
    from sagemaker.mlops.workflow.steps import TrainingStep
    from sagemaker.train.configs import (
        CheckpointConfig,
        Compute,
        InputData,
        Networking,
        OutputDataConfig,
        S3DataSource,
        StoppingCondition,
    )
    from sagemaker.core.shapes import Tag
    from sagemaker.train.model_trainer import ModelTrainer

    s, sec = spec.similarity, spec.security
    trainer = ModelTrainer(
        training_image=spec.image,  # no source_code: SageMaker starts the container as `train`
        role=spec.role_arn,
        sagemaker_session=session,
        base_job_name=f"{spec.job_name_prefix}-similarity",  # not emitted by ModelTrainer (notes, gotcha 5)
        # volume and time limits reject pipeline parameters (notes, gotcha 6): compile-time constants
        compute=Compute(
            instance_type=params["InstanceType"],
            instance_count=params["InstanceCount"],
            volume_size_in_gb=s.volume_gb,
            volume_kms_key_id=sec.volume_kms_key,
            enable_managed_spot_training=True if s.spot else None,
        ),
        stopping_condition=StoppingCondition(
            max_runtime_in_seconds=s.max_runtime_seconds,
            max_wait_time_in_seconds=s.max_wait_seconds if s.spot else None,
        ),
        # NONE: ModelArtifacts is a prefix of the hosts' shard files, not a model.tar.gz
        output_data_config=OutputDataConfig(
            s3_output_path=_run_uri(params, "similarity"), compression_type="NONE", kms_key_id=sec.output_kms_key
        ),
        # Per execution, not per job: a retried or spot-restarted job of this execution resumes from the
        # checkpoints of the attempt before; another execution (other data) never sees them.
        checkpoint_config=CheckpointConfig(s3_uri=_run_uri(params, "checkpoints"), local_path=CHECKPOINT_PATH),
        # The hosts never talk to each other or to the internet: SageMaker moves their data.
        networking=Networking(
            subnets=list(sec.subnets) or None,
            security_group_ids=list(sec.security_groups) or None,
            enable_network_isolation=sec.network_isolation,
        ),
        tags=[Tag(key=key, value=value) for key, value in spec.tags.items()] or None,
        environment={"ALLPAIRS_CHECKPOINT_SECONDS": str(s.checkpoint_seconds)},
        # SageMaker passes hyperparameters as strings: parameters go through to_string() (notes, gotcha 7)
        hyperparameters={
            "top_k": params["TopK"].to_string(),
            "min_score": params["MinScore"].to_string(),
            "memory_budget_mb": str(s.memory_budget_mb),
            "threads": "0",
        },
    )
    channel = InputData(
        channel_name="normalized",
        data_source=S3DataSource(
            s3_data_type="S3Prefix",
            s3_uri=_normalized_uri(preprocess),
            s3_data_distribution_type="FullyReplicated",  # every host holds the whole matrix
        ),
    )
    return TrainingStep(
        name=SIMILARITY,
        display_name=SIMILARITY,
        description="On InstanceCount hosts, each host computes the top-k cosine neighbours of its share of rows",
        step_args=trainer.train(input_data_config=[channel]),
        retry_policies=_capacity_retry(spec),
    )


def _merge_step(spec: Spec, session: Any, params: dict[str, Any], preprocess: Any, similarity: Any) -> Any:
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join
    from sagemaker.mlops.workflow.steps import ProcessingStep

    arguments: list[Any] = [
        "--execution-id", ExecutionVariables.PIPELINE_EXECUTION_ID,
        "--artifact-uri", _run_uri(params, "artifact"),
    ]  # fmt: skip
    for name, param in params.items():  # the execution's parameters, recorded in the artifact's manifest
        arguments += ["--parameter", Join(on="", values=[f"{name}=", param])]
    # Merge needs no network: SageMaker moves its data in and out (registering is the next step's job).
    processor = _processor(spec, session, spec.merge, "merge", needs_network=False)
    return ProcessingStep(
        name=MERGE,
        display_name=MERGE,
        description="Check that every row is covered once, write the neighbours artifact",
        step_args=processor.run(
            inputs=[
                _s3_input("shards", similarity.properties.ModelArtifacts.S3ModelArtifacts, SHARDS_PATH),
                _s3_input("normalized", _normalized_uri(preprocess), NORMALIZED_IN_PATH),
            ],
            outputs=[_s3_output(ARTIFACT_OUTPUT, _run_uri(params, "artifact"), ARTIFACT_PATH)],
            arguments=arguments,
        ),
        retry_policies=_capacity_retry(spec),
    )


def _register_step(spec: Spec, session: Any, params: dict[str, Any], merge: Any) -> Any:
    """After Merge's output is uploaded (the service does it once Merge's container has exited), check it where
    it landed and register it: the model package never exists before its files (steps/register.py)."""
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.mlops.workflow.steps import ProcessingStep

    artifact = merge.properties.ProcessingOutputConfig.Outputs[ARTIFACT_OUTPUT].S3Output.S3Uri
    arguments: list[Any] = [
        "--execution-id", ExecutionVariables.PIPELINE_EXECUTION_ID,
        "--artifact-uri", _run_uri(params, "artifact"),
        "--model-package-group", params["ModelPackageGroup"],
        "--approval-status", params["ApprovalStatus"],
    ]  # fmt: skip
    # Register calls the SageMaker Model Registry: never isolated.
    processor = _processor(spec, session, spec.merge, "register", needs_network=True)
    return ProcessingStep(
        name=REGISTER,
        display_name=REGISTER,
        description="Check every artifact file where it landed (size, SHA-256), then register the artifact",
        step_args=processor.run(
            inputs=[_s3_input(ARTIFACT_OUTPUT, artifact, REGISTER_INPUT_PATH)],
            # registration.json lands beside the artifact's files
            outputs=[_s3_output(REGISTRATION_OUTPUT, _run_uri(params, "artifact"), REGISTRATION_PATH)],
            arguments=arguments,
        ),
        retry_policies=_capacity_retry(spec),
    )


# ---------------------------------------------------------------------------------------------------------
# SDK environment


@functools.lru_cache(maxsize=None)  # botocore caches service models per session: reuse it
def _offline_boto_session(region: str) -> "boto3.Session":
    """A session that can never resolve real credentials: compiling must not reach IMDS, SSO or STS.

    The PipelineSession creates clients (which load credentials) but, with everything explicit, calls none.
    """
    import boto3
    import botocore.session

    # Ignore AWS_PROFILE and the user's ~/.aws files: compiling depends on the spec alone (and a profile
    # that does not exist here must not break `validate` in CI).
    core = botocore.session.Session(
        session_vars={
            "profile": (None, None, None, None),
            "config_file": (None, None, os.devnull, None),
            "credentials_file": (None, None, os.devnull, None),
        }
    )
    return boto3.Session(
        botocore_session=core,
        region_name=region,
        aws_access_key_id="allpairs-compile-only",
        aws_secret_access_key="allpairs-compile-only",
    )


def _import_sdk() -> None:
    """The slow import; it builds boto3 sessions, so a broken AWS configuration surfaces here."""
    import botocore.exceptions

    try:
        import sagemaker.mlops.workflow.pipeline  # noqa: F401
    except botocore.exceptions.BotoCoreError as exc:
        raise CompileError(f"cannot load the SageMaker SDK: {exc}; check AWS_PROFILE and ~/.aws/config") from None


_OUR_CONFIG_VALIDATED: list[bool] = []


@contextlib.contextmanager
def _config_validated_once() -> Iterator[None]:
    """Skip the SDK's re-validation of our own constant config dict while building.

    The SDK validates the session's config against its JSON schema on every config lookup (~40 per build,
    each re-checking the schema itself): ~3 s per compile. Any other config is still validated.
    """
    from sagemaker.core.config.config_manager import SageMakerConfig

    original = SageMakerConfig.__dict__.get("validate_sagemaker_config")
    if not isinstance(original, staticmethod):  # the SDK changed: leave it alone
        yield
        return
    validate = original.__func__

    def validate_unless_ours(sagemaker_config=None):
        if sagemaker_config != _SDK_CONFIG:
            validate(sagemaker_config)

    if not _OUR_CONFIG_VALIDATED:
        validate(_SDK_CONFIG)  # ours is checked too, once per process
        _OUR_CONFIG_VALIDATED.append(True)
    SageMakerConfig.validate_sagemaker_config = staticmethod(validate_unless_ours)
    try:
        yield
    finally:
        SageMakerConfig.validate_sagemaker_config = original


@contextlib.contextmanager
def _quiet_sdk(region: str) -> Iterator[None]:
    """Make importing and using the SDK offline and silent; restore the environment afterwards.

    - AWS_DEFAULT_REGION is set (and kept) if absent: `import sagemaker.mlops` builds a boto3 client.
    - The SDK builds stray sessions (at import, and a LocalSession inside ProcessingStep) whose clients load
      credentials: with none configured botocore would query the EC2 metadata service, so it is disabled
      for the duration (the session compile_definition passes has fixed placeholder credentials).
    - SAGEMAKER_VALIDATE_ROLE=false: ModelTrainer otherwise calls IAM while being constructed.
    - INFO/WARNING logs and UserWarnings of the SDK are noise for a compile.
    """
    os.environ.setdefault("AWS_DEFAULT_REGION", region)
    forced = {"SAGEMAKER_VALIDATE_ROLE": "false", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {key: os.environ.get(key) for key in forced}
    levels = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    previous_disable = logging.root.manager.disable
    os.environ.update(forced)
    try:
        logging.disable(logging.WARNING)  # also covers SDK loggers that set their own level
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _import_sdk()
            with _config_validated_once():
                yield
    finally:
        logging.disable(previous_disable)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
