"""Test-wide settings."""
import os

import pytest

# The definition cache (pipeline/definition/cache.py) stays out of the tests: some replace parts of the compiler
# or the SDK, which the cache's key cannot see. tests/test_definition_cache.py turns it on where it is tested.
os.environ["ALLPAIRS_CACHE_DIR"] = "off"


@pytest.fixture
def inp(tmp_path, monkeypatch):
    """The matrix input folder of a Preprocess container whose /opt/ml is tmp_path."""
    monkeypatch.setenv("ALLPAIRS_OPT_ML", str(tmp_path))
    folder = tmp_path / "processing/input/matrix"
    folder.mkdir(parents=True)
    return folder
