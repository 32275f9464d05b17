"""Taming the SageMaker SDK: imported lazily (seconds, and it needs a region), silent, offline, and with our own
configuration instead of the user's SDK config files. compile.py builds the definition inside `quiet_sdk`.

See shared/reference/sagemaker-v3-notes.md (section 0, gotchas 1, 3, 4, 13, 14) for why each piece exists.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from typing import TYPE_CHECKING, Iterator

from pipeline.errors import CompileError

if TYPE_CHECKING:  # pragma: no cover
    import boto3

# A config dict instead of the SDK's config files: telemetry off, and nothing from ~/.config/sagemaker or
# /etc/xdg/sagemaker can inject roles, tags, KMS keys or subnets into the definition.
SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
CHATTY_LOGGERS = ("sagemaker", "botocore", "boto3", "urllib3")  # their INFO lines and warnings: noise to us


@functools.lru_cache(maxsize=None)  # botocore caches service models per session: reuse it
def offline_boto_session(region: str) -> "boto3.Session":
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
        if sagemaker_config != SDK_CONFIG:
            validate(sagemaker_config)

    if not _OUR_CONFIG_VALIDATED:
        validate(SDK_CONFIG)  # ours is checked too, once per process
        _OUR_CONFIG_VALIDATED.append(True)
    SageMakerConfig.validate_sagemaker_config = staticmethod(validate_unless_ours)
    try:
        yield
    finally:
        SageMakerConfig.validate_sagemaker_config = original


@contextlib.contextmanager
def quiet_sdk(region: str) -> Iterator[None]:
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
