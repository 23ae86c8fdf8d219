"""Tests run with 8 CPU devices so that sharded code is checked against one device.

The compiled programs of one test run are shared by all its processes (the pytest-xdist
workers and the commands the tests start) through JAX's persistent compilation cache in a
temporary folder made for the run and removed at its end: many tests compile the same tiny
programs, and compiling is most of the suite's time. A fresh run starts with an empty cache.
"""

import os
import shutil
import tempfile

# The backend's LLVM passes at level 0: the tests' tiny programs compile about 30% faster and
# run the same (the golden run stays bit-identical).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=0")

# The first process of a run (the xdist controller, or pytest alone) makes the folder; the
# workers and commands it starts inherit the variable.
_CACHE_OWNER = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _CACHE_OWNER:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="critkl-test-programs-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_sessionfinish(session):
    if _CACHE_OWNER and not hasattr(session.config, "workerinput"):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
