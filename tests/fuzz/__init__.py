"""Fuzzing of the packed file format and the native runtime's C API (issues 10 and 11), one module per corpus:

* :mod:`tests.fuzz.program`: packed files (docs/packed-format.md) mutated in the container, the program and
  the metadata, loaded and run by ``libbhvit_runtime``;
* :mod:`tests.fuzz.capi`: hostile ctypes calls of the C API (runtime/include/bhvit_runtime.h);

run case by case in worker subprocesses that name the case they were running if they die
(:mod:`tests.fuzz.driver`). From the repository root::

    python -m tests.fuzz --program-cases 2000 --capi-cases 1000

Under the sanitizer build (``scripts/build_sanitized.sh --runtime``), the driver passes the environment
through: see tests/runtime/test_sanitized_runtime.py.
"""
