"""Container paths. Everything lives under /opt/ml; ALLPAIRS_OPT_ML re-roots it for local runs."""
from __future__ import annotations

import os
from pathlib import Path

OPT_ML = "/opt/ml"
OPT_ML_ENV = "ALLPAIRS_OPT_ML"


def opt_ml() -> Path:
    return Path(os.environ.get(OPT_ML_ENV) or OPT_ML)


def processing_input(name: str) -> Path:
    return opt_ml() / "processing" / "input" / name


def processing_output(name: str) -> Path:
    return opt_ml() / "processing" / "output" / name


def training_config(name: str) -> Path:
    return opt_ml() / "input" / "config" / name


def training_channel(name: str) -> Path:
    return opt_ml() / "input" / "data" / name


def model_dir() -> Path:
    return opt_ml() / "model"


def checkpoint_dir() -> Path:
    return opt_ml() / "checkpoints"


# Where a failing container's reason is read, by job type. Training: /opt/ml/output/failure becomes the job's
# FailureReason (docs: "How Amazon SageMaker AI Processes Training Output"). Processing: /opt/ml/output/message
# becomes the job's ExitMessage, its first 1 KB, and must be UTF-8 or the job fails with a ClientError (docs:
# "Save and Access Metadata Information About Your Processing Job", byoc-metadata).
TRAINING, PROCESSING = "training", "processing"
FAILURE_FILES = {TRAINING: "output/failure", PROCESSING: "output/message"}
MAX_FAILURE_BYTES = 1024


def failure_file(job: str) -> Path:
    return opt_ml() / FAILURE_FILES[job]


def failure_text(reason: str) -> bytes:
    """The reason as the service keeps it: UTF-8, at most 1 KB (cut on a character boundary), one line."""
    data = " ".join(reason.split()).encode("utf-8", "replace")[:MAX_FAILURE_BYTES - 1]
    return data.decode("utf-8", "ignore").encode("utf-8") + b"\n"
