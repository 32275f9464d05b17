"""`python -m steps.kernel`: compile the kernel's hot loop into numba's cache (the image build runs it, so no
host compiles it again; see containers/Dockerfile)."""
import time

from .compiled import admit, warm_up

began = time.perf_counter()
warm_up()
print(f"numba kernel ready in {time.perf_counter() - began:.1f} s ({len(admit.signatures)} signature(s) compiled "
      f"or loaded from the cache)")
