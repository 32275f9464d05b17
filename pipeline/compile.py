"""Spec -> SageMaker Pipeline -> definition JSON.

The definition is built with zero network calls and is byte-identical for the same spec (see
shared/reference/sagemaker-v3-notes.md, section 1): explicit role ARN, explicit s3:// URIs built with Join,
role validation off, telemetry opted out, no SDK config files read. The step arguments follow
docs/container-contract.md; the local runner (pipeline/local) interprets the very same JSON.

The SDK is imported lazily: importing it costs seconds and needs a region (notes, gotcha 13).
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pipeline.definition.cache import cached_definition
from pipeline.definition.limits import check_definition
from pipeline.errors import AllpairsError, CompileError
from pipeline.sdk import SDK_CONFIG, offline_boto_session, quiet_sdk
from pipeline.spec import Spec
from pipeline.spec.parameters import parameters_of
from steps.contract import (APPROVAL_STATUSES, ARTIFACT, CHECKPOINT_PATH, CHECKPOINT_SECONDS_ENV, MATRIX,
                            MEMORY_BUDGET_MB, METRIC_DEFINITIONS, MIN_SCORE, MODE, NORMALIZED, QUERIES, QUERIES_MODE,
                            QUERY_CHUNKS, REGISTRATION, SHARDS, THREADS, TOP_K, processing_input_path,
                            processing_output_path)

if TYPE_CHECKING:  # pragma: no cover
    import boto3
    from sagemaker.mlops.workflow.pipeline import Pipeline

# Step names are the keys of `Steps.<name>` references: the local runner and the CLI rely on them.
PREPROCESS, SIMILARITY, MERGE, REGISTER = "Preprocess", "Similarity", "Merge", "Register"
STEP_NAMES = (PREPROCESS, SIMILARITY, MERGE, REGISTER)

ARTIFACT_OUTPUT = ARTIFACT  # the Merge output holding the product of a run


def compile_definition(spec: Spec, cached: bool = True) -> str:
    """The pipeline definition JSON, exactly as `upsert` sends it. No network, deterministic. `cached`: take it
    from pipeline/definition/cache.py when this spec, SDK and compiler built it before."""
    text = cached_definition(repr(spec), lambda: _compile(spec)) if cached else _compile(spec)
    check_definition(text, spec.parameters, lambda name: _where_parameter(spec, name))
    return text


def _compile(spec: Spec) -> str:
    with quiet_sdk(spec.region):
        try:
            pipeline = build_pipeline(spec, boto_session=offline_boto_session(spec.region))
            text = _with_training_job_prefix(pipeline.definition(), spec)  # step arguments are built in here
        except AllpairsError:
            raise
        except Exception as exc:  # a spec value the SDK refuses: one line, not a traceback
            reason = (str(exc).strip().splitlines() or [""])[0]
            raise CompileError(
                f"{spec.where('')}: cannot build the pipeline definition: {type(exc).__name__}: {reason}"
            ) from exc
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
    """The sagemaker Pipeline object. Call it inside quiet_sdk, as compile_definition does."""
    from sagemaker.core.workflow.pipeline_context import PipelineSession
    from sagemaker.core.workflow.pipeline_definition_config import PipelineDefinitionConfig
    from sagemaker.mlops.workflow.pipeline import Pipeline

    session = PipelineSession(
        boto_session=boto_session,
        sagemaker_config=SDK_CONFIG,
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
    """The definition's parameters, from the one table (pipeline/spec/parameters.py), with the spec's defaults."""
    from sagemaker.core.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString

    kinds = {"String": ParameterString, "Integer": ParameterInteger, "Float": ParameterFloat}
    enums = {"InstanceType": list(spec.instance_types) if spec.instance_types else None,
             "ApprovalStatus": list(APPROVAL_STATUSES)}
    params = {}
    for p in parameters_of(spec.mode):  # queries mode adds QueryData (docs/queries.md: why a spec-level switch)
        default = float(spec.parameters[p.name]) if p.type == "Float" else spec.parameters[p.name]  # Float refuses int
        extra = {"enum_values": enums.get(p.name)} if p.type == "String" else {}
        params[p.name] = kinds[p.type](p.name, default_value=default, **extra)
    return params


def _run_uri(params: dict[str, Any], leaf: str) -> Any:
    """<OutputPrefix>/<PipelineExecutionId>/<leaf>: every execution writes under its own prefix."""
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join

    return Join(on="/", values=[params["OutputPrefix"], ExecutionVariables.PIPELINE_EXECUTION_ID, leaf])


def _option(name: str, value: Any) -> Any:
    """`--name=value`, one container argument: a value that starts with '-' (a parameter, an id column named
    `-x`) stays the option's value instead of being parsed as another option by the step's argparse."""
    from sagemaker.core.workflow.functions import Join

    if isinstance(value, str):
        return f"--{name}={value}"
    parts = [value]
    if isinstance(value, Join):  # one flat Join, not a Join inside a Join: each value a plain one
        parts = [part for i, v in enumerate(value.values) for part in ([value.on, v] if i else [v]) if part != ""]
    return Join(on="", values=[f"--{name}=", *parts])


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
            encrypt_inter_container_traffic=True if sec.encrypt_inter_container_traffic else None,
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
    return preprocess.properties.ProcessingOutputConfig.Outputs[NORMALIZED].S3Output.S3Uri


def _queries_uri(preprocess: Any) -> Any:
    return preprocess.properties.ProcessingOutputConfig.Outputs[QUERIES].S3Output.S3Uri


# ---------------------------------------------------------------------------------------------------------
# Steps


def _preprocess_step(spec: Spec, session: Any, params: dict[str, Any]) -> Any:
    from sagemaker.mlops.workflow.steps import CacheConfig, ProcessingStep

    arguments: list[Any] = [
        _option("input-uri", params["InputData"]),
        _option("non-finite", spec.input.non_finite),
        _option("chunk-rows", str(spec.preprocess.chunk_rows)),
        _option("memory-budget-mb", str(spec.preprocess.memory_budget_mb)),
    ]  # fmt: skip
    if spec.input.id_column is not None:
        arguments += [_option("id-column", spec.input.id_column)]
    if spec.input.vector_column is not None:
        arguments += [_option("vector-column", spec.input.vector_column)]
    if spec.input.delimiter is not None:
        arguments += [_option("delimiter", spec.input.delimiter)]
    inputs = [_s3_input(MATRIX, params["InputData"], processing_input_path(MATRIX))]
    outputs = [_s3_output(NORMALIZED, _run_uri(params, "normalized"), processing_output_path(NORMALIZED))]
    if spec.mode == QUERIES_MODE:  # the queries too, into balanced chunk files (steps/formats/queries.py)
        q = spec.queries
        arguments += [_option("query-uri", params["QueryData"]), _option("query-files", str(q.chunk_files)),
                      _option("self-rule", q.self_rule)]
        if q.id_column is not None:
            arguments += [_option("query-id-column", q.id_column)]
        inputs.append(_s3_input(QUERIES, params["QueryData"], processing_input_path(QUERIES)))
        outputs.append(_s3_output(QUERIES, _run_uri(params, "queries"), processing_output_path(QUERIES)))
    processor = _processor(spec, session, spec.preprocess, "preprocess", needs_network=False)
    # Caching: the key is the InputData URI and the arguments, not the bytes behind the URI, so a hit is
    # only correct if the user vouches that a URI's content never changes (docs/aws.md, "Step caching").
    cache = CacheConfig(enable_caching=True, expire_after=spec.cache.expire_after) if spec.cache.immutable_inputs else None
    return ProcessingStep(
        name=PREPROCESS,
        display_name=PREPROCESS,  # the public schema allows only [A-Za-z0-9-_] here
        description="Read the input matrix, check for non-finite values, L2-normalize rows, write float32 chunks",
        step_args=processor.run(inputs=inputs, outputs=outputs, arguments=arguments),
        cache_config=cache,
        retry_policies=_capacity_retry(spec),
    )


def _similarity_step(spec: Spec, session: Any, params: dict[str, Any], preprocess: Any) -> Any:
    from sagemaker.mlops.workflow.steps import TrainingStep
    from sagemaker.train.configs import (
        CheckpointConfig,
        Compute,
        InputData,
        MetricDefinition,
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
            # CreateTrainingJob's EnableInterContainerTrafficEncryption (ModelTrainer exposes it on Networking)
            enable_inter_container_traffic_encryption=True if sec.encrypt_inter_container_traffic else None,
        ),
        tags=[Tag(key=key, value=value) for key, value in spec.tags.items()] or None,
        environment={CHECKPOINT_SECONDS_ENV: str(s.checkpoint_seconds)},
        # SageMaker passes hyperparameters as strings: parameters go through to_string() (notes, gotcha 7)
        hyperparameters={
            TOP_K: params["TopK"].to_string(),
            MIN_SCORE: params["MinScore"].to_string(),
            MEMORY_BUDGET_MB: str(s.memory_budget_mb),
            THREADS: "0",
            **({MODE: QUERIES_MODE} if spec.mode == QUERIES_MODE else {}),
        },
    )
    # The hosts' progress lines become Studio charts (per host): SageMaker applies these regexes to their output.
    trainer.with_metric_definitions([MetricDefinition(name=name, regex=regex) for name, regex in METRIC_DEFINITIONS])
    channel = InputData(
        channel_name=NORMALIZED,
        data_source=S3DataSource(
            s3_data_type="S3Prefix",
            s3_uri=_normalized_uri(preprocess),
            s3_data_distribution_type="FullyReplicated",  # every host holds the whole matrix
        ),
    )
    channels = [channel]
    if spec.mode == QUERIES_MODE:
        from sagemaker.core.workflow.functions import Join

        # Each host gets about 1/n of the query chunk files, by count (AWS API reference, S3DataSource); the
        # corpus stays FullyReplicated. The prefix is the chunks folder only: every object there is a chunk file.
        channels.append(InputData(
            channel_name=QUERIES,
            data_source=S3DataSource(
                s3_data_type="S3Prefix",
                s3_uri=Join(on="/", values=[_queries_uri(preprocess), QUERY_CHUNKS]),
                s3_data_distribution_type="ShardedByS3Key",
            ),
        ))
    return TrainingStep(
        name=SIMILARITY,
        display_name=SIMILARITY,
        description="On InstanceCount hosts, each host computes the top-k cosine neighbours of its share of rows",
        step_args=trainer.train(input_data_config=channels),
        retry_policies=_capacity_retry(spec),
    )


def _merge_step(spec: Spec, session: Any, params: dict[str, Any], preprocess: Any, similarity: Any) -> Any:
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join
    from sagemaker.mlops.workflow.steps import ProcessingStep

    arguments: list[Any] = [
        _option("execution-id", ExecutionVariables.PIPELINE_EXECUTION_ID),
        _option("artifact-uri", _run_uri(params, "artifact")),
    ]  # fmt: skip
    for name, param in params.items():  # the execution's parameters, recorded in the artifact's manifest
        arguments += [Join(on="", values=[f"--parameter={name}=", param])]
    inputs = [
        _s3_input(SHARDS, similarity.properties.ModelArtifacts.S3ModelArtifacts, processing_input_path(SHARDS)),
        _s3_input(NORMALIZED, _normalized_uri(preprocess), processing_input_path(NORMALIZED)),
    ]
    if spec.mode == QUERIES_MODE:
        arguments += [_option("mode", QUERIES_MODE)]
        inputs.append(_s3_input(QUERIES, _queries_uri(preprocess), processing_input_path(QUERIES)))
    # Merge needs no network: SageMaker moves its data in and out (registering is the next step's job).
    processor = _processor(spec, session, spec.merge, "merge", needs_network=False)
    return ProcessingStep(
        name=MERGE,
        display_name=MERGE,
        description="Check that every row is covered once, write the neighbours artifact",
        step_args=processor.run(
            inputs=inputs,
            outputs=[_s3_output(ARTIFACT, _run_uri(params, "artifact"), processing_output_path(ARTIFACT))],
            arguments=arguments,
        ),
        retry_policies=_capacity_retry(spec),
    )


def _register_step(spec: Spec, session: Any, params: dict[str, Any], merge: Any) -> Any:
    """After Merge's output is uploaded (the service does it once Merge's container has exited), check it where
    it landed and register it: the model package never exists before its files (steps/register.py)."""
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.mlops.workflow.steps import ProcessingStep

    artifact = merge.properties.ProcessingOutputConfig.Outputs[ARTIFACT].S3Output.S3Uri
    arguments: list[Any] = [
        _option("execution-id", ExecutionVariables.PIPELINE_EXECUTION_ID),
        _option("artifact-uri", _run_uri(params, "artifact")),
        _option("model-package-group", params["ModelPackageGroup"]),
        _option("approval-status", params["ApprovalStatus"]),
    ]  # fmt: skip
    # Register calls the SageMaker Model Registry: never isolated.
    processor = _processor(spec, session, spec.merge, "register", needs_network=True)
    return ProcessingStep(
        name=REGISTER,
        display_name=REGISTER,
        description="Check every artifact file where it landed (size, SHA-256), then register the artifact",
        step_args=processor.run(
            inputs=[_s3_input(ARTIFACT, artifact, processing_input_path(ARTIFACT))],
            # registration.json lands beside the artifact's files
            outputs=[_s3_output(REGISTRATION, _run_uri(params, "artifact"), processing_output_path(REGISTRATION))],
            arguments=arguments,
        ),
        retry_policies=_capacity_retry(spec),
    )
