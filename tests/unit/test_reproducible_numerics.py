"""Same code and params give the same bytes on every x86 machine with AVX2 or better (#15 §2): numpy's
AVX-512 kernels, which round differently, are off in every process that imports `pipelines` first."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

PROBE = ("import pipelines, numpy, json; m = numpy._core._multiarray_umath; "
         "print(json.dumps({f: m.__cpu_features__.get(f, False) for f in m.__cpu_dispatch__}))")


@pytest.mark.skipif(platform.machine().lower() not in {"x86_64", "amd64"}, reason="the cap is for x86-64 only")
def test_importing_pipelines_first_leaves_numpy_no_avx512_kernel():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin"})
    enabled = {feature for feature, on in json.loads(done.stdout).items() if on}
    assert not enabled & {"X86_V4", "AVX512_ICL", "AVX512_SPR", "AVX512F", "AVX512_SKX"}, enabled


def test_an_explicit_setting_wins():
    done = subprocess.run([sys.executable, "-c", "import pipelines, os; print(os.environ['NPY_DISABLE_CPU_FEATURES'])"],
                          capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin", "NPY_DISABLE_CPU_FEATURES": "AVX512_SPR"})
    assert done.stdout.strip() == "AVX512_SPR"
