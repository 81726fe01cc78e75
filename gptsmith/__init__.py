"""gptsmith: build a ChatGPT-style assistant end to end."""

import ctypes
import os
import platform

__version__ = "0.1.0"

# OpenMP threads that wait for work sleep instead of spinning. Spinning wins a little on an
# idle machine, but as soon as another process wants a core, the spinning threads and it
# fight for it: on 2 cores with one other busy process, a 2-thread training step ran 2.6x
# slower than with 1 thread, and decoding 3-9x slower. Sleeping threads lose nothing idle
# (1.0-1.15x) and recover most of that. Set before torch loads its OpenMP runtime; a value
# the user exported wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# glibc's malloc hands every block of 32 MB and more (a 4,096 x 2,048 fp32 logits tensor, its
# gradient) to the kernel as a fresh mapping and returns it on free, so each training step
# faults its big tensors in again, page by page: 42k page faults a step on the default
# pre-training step. Served from the heap instead, kept when freed (up to 512 MB free at its
# top) and grown 64 MB at a time, the same step faults almost never, and the default
# pre-training ran 1.16x faster (README, "Where the time goes"). GPTSMITH_MALLOC=default
# keeps glibc's own.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def _tune_malloc() -> bool:
    if os.environ.get("GPTSMITH_MALLOC", "") == "default" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        return all(libc.mallopt(option, value) == 1 for option, value in (
            (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 512 << 20), (_M_TOP_PAD, 64 << 20)))
    except (OSError, AttributeError):
        return False


MALLOC_TUNED = _tune_malloc()
