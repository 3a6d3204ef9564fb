#!/usr/bin/env python3
"""Run one fuzz target under atheris (libFuzzer, coverage-guided).

    python3 tests/fuzz/run.py TARGET [libFuzzer options] [CORPUS_DIR ...]

Start from a copy of tests/fuzz/corpus/TARGET (libFuzzer adds what it finds to the first corpus
directory). Examples: ``-runs=1000000``, ``-max_total_time=600``. A finding is written as
crash-<hash> in the working directory; make it a regression test in tests/fuzz/test_fuzz.py.
"""
import sys
from pathlib import Path

import atheris

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

with atheris.instrument_imports(include=["device_ca"]):
    import targets

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        sys.exit(f"usage: run.py {{{','.join(targets.TARGETS)}}} [libFuzzer options] [corpus ...]")
    target = targets.TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
