"""The compiled definition is cached by spec, SDK and compiler: a second run skips the SDK, any change compiles."""
import json
import subprocess
import sys
from pathlib import Path

from pipeline.compile import compile_definition
from pipeline.definition import cache
from pipeline.spec import load_spec

REPO = Path(__file__).resolve().parents[1]


def test_a_cached_definition_is_the_compiled_one_and_skips_the_sdk(tmp_path):
    env = {"ALLPAIRS_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    probe = ("import sys, json; from pipeline.api import load; spec, text = load(sys.argv[1]); "
             "print(json.dumps([text, sorted(m for m in sys.modules if m.startswith('sagemaker'))[:3]]))")

    def definition():
        out = subprocess.run([sys.executable, "-c", probe, str(REPO / "pipeline.yaml")], cwd=REPO, env=env,
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out)

    first, imported = definition()
    assert imported  # compiled: the SDK was imported
    assert len(list((tmp_path / "cache/definitions").glob("*.json"))) == 1
    again, imported = definition()
    assert again == first and imported == []  # from the cache: no SDK
    assert again == compile_definition(load_spec(REPO / "pipeline.yaml"), cached=False)


def test_the_key_follows_the_spec_and_a_damaged_entry_is_compiled_again(tmp_path, monkeypatch):
    monkeypatch.setenv("ALLPAIRS_CACHE_DIR", str(tmp_path))
    calls = []

    def compile_():
        calls.append(1)
        return '{"Version": "2020-12-01"}'

    assert cache.cached_definition("spec A", compile_) == cache.cached_definition("spec A", compile_)
    assert len(calls) == 1
    cache.cached_definition("spec B", compile_)
    assert len(calls) == 2
    (entry,) = [p for p in (tmp_path / "definitions").iterdir() if p.stem == cache.definition_key("spec A")]
    entry.write_bytes(b"\xff\xfe")  # not UTF-8: ignored, compiled again
    assert cache.cached_definition("spec A", compile_) == '{"Version": "2020-12-01"}' and len(calls) == 3
    entry.write_text('{"Version": ')  # not JSON: the same
    assert cache.cached_definition("spec A", compile_) == '{"Version": "2020-12-01"}' and len(calls) == 4
    monkeypatch.setenv("ALLPAIRS_CACHE_DIR", "off")
    cache.cached_definition("spec A", compile_)
    assert len(calls) == 5
