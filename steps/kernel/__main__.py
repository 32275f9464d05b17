"""`python -m steps.kernel`: compile the kernel's hot loop into numba's cache (the image build runs it, so no
host compiles it again; see containers/Dockerfile)."""
import time

from .compiled import admit, warm_up

began = time.perf_counter()
warm_up()
stats = admit.stats
print(f"numba kernel ready in {time.perf_counter() - began:.1f} s: {sum(stats.cache_misses.values())} signature(s) "
      f"compiled, {sum(stats.cache_hits.values())} loaded, cache {stats.cache_path}")
