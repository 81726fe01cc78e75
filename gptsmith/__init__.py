"""gptsmith: build a ChatGPT-style assistant end to end."""

import os

__version__ = "0.1.0"

# OpenMP threads that wait for work sleep instead of spinning. Spinning wins a little on an
# idle machine, but as soon as another process wants a core, the spinning threads and it
# fight for it: on 2 cores with one other busy process, a 2-thread training step ran 2.6x
# slower than with 1 thread, and decoding 3-9x slower. Sleeping threads lose nothing idle
# (1.0-1.15x) and recover most of that. Set before torch loads its OpenMP runtime; a value
# the user exported wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
