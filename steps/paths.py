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


def failure_file() -> Path:
    return opt_ml() / "output" / "failure"
