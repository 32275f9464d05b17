"""Test-wide settings."""
import os

# The definition cache (pipeline/definition/cache.py) stays out of the tests: some replace parts of the compiler
# or the SDK, which the cache's key cannot see. tests/test_definition_cache.py turns it on where it is tested.
os.environ["ALLPAIRS_CACHE_DIR"] = "off"
