"""`python -m steps.kernel`: compile the kernel's hot loop into numba's cache (the image build runs it, so no
host compiles it again; see containers/Dockerfile)."""
import time

from .compiled import admit, admit_product, invert, sparse_dots, warm_up

began = time.perf_counter()
warm_up()
compiled = sum(sum(f.stats.cache_misses.values()) for f in (admit, admit_product, invert, sparse_dots))
loaded = sum(sum(f.stats.cache_hits.values()) for f in (admit, admit_product, invert, sparse_dots))
print(f"numba kernel ready in {time.perf_counter() - began:.1f} s: {compiled} signature(s) compiled, {loaded} loaded, "
      f"cache {admit.stats.cache_path}")
