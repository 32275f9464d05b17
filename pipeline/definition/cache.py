"""Compiled definitions kept on disk, so a run whose spec, SDK and compiler have not changed skips the SDK.

Building the definition imports the SageMaker SDK (seconds on every `run`, `validate` and `definition`). The
definition is a pure function of the parsed spec, the installed SDK distributions and our compiler's code, so
it is stored under the sha256 of all three:

    $ALLPAIRS_CACHE_DIR/definitions/<key>.json   (default ~/.cache/allpairs, or $XDG_CACHE_HOME/allpairs)

ALLPAIRS_CACHE_DIR=off turns it off. A file that cannot be read or written is ignored (compiled again): the
cache never changes a result, only how long it takes. `upsert` and `diff` compile afresh (they talk to AWS
anyway, and what they send must come from the SDK itself).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

CACHE_ENV = "ALLPAIRS_CACHE_DIR"
_SOURCES = (Path(__file__).resolve().parents[1], Path(__file__).resolve().parents[2] / "steps" / "contract.py")


def cache_dir() -> Path | None:
    raw = os.environ.get(CACHE_ENV, "").strip()
    if raw.lower() == "off":
        return None
    if raw:
        return Path(raw).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(base) / "allpairs"


def definition_key(spec_repr: str) -> str:
    """sha256 of the parsed spec, every installed sagemaker* distribution's version and the compiler's code
    (pipeline/ and the container contract)."""
    digest = hashlib.sha256(spec_repr.encode())
    sdk = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
                 if (d.metadata["Name"] or "").lower().startswith("sagemaker"))
    digest.update("\n".join(sdk).encode())
    for root in _SOURCES:
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            digest.update(str(path.relative_to(root.parent)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def cached_definition(spec_repr: str, compile: Callable[[], str]) -> str:
    """The definition stored for this key, or `compile()`'s, stored for next time (temp file + rename)."""
    folder = cache_dir()
    if folder is None:
        return compile()
    path = folder / "definitions" / f"{definition_key(spec_repr)}.json"
    try:
        text = path.read_text()
        json.loads(text)  # an entry altered by hand is compiled again, never passed on
        return text
    except (OSError, ValueError):  # missing, not UTF-8, not JSON
        pass
    text = compile()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                         delete=False) as f:
            f.write(text)
        os.replace(f.name, path)
    except OSError:
        pass  # a read-only home: compile every time
    return text
