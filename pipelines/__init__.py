"""EchoForge's pipelines floor (CLI, flows, tracking, registry, serving) over the pure `echo_core`.

Importing it first caps numpy's SIMD dispatch on x86-64 at AVX2 (x86-64-v3) for this process and its children.
numpy picks its kernels per machine when it is imported, and its AVX-512 kernels for exp, log, sin, ... round
differently from the AVX2 ones: on an AVX-512 machine the phantom default had other bytes than the committed
`data.dvc` names (measured: 156 of its 198 files). With the cap, every AVX2-or-better x86 machine computes the
same bytes. The cap must be set before numpy is first imported, so it is set here; a process that imported
numpy earlier (a notebook, say) keeps its machine's kernels, and an explicit NPY_DISABLE_CPU_FEATURES wins.
"""

import os
import platform
import sys

AVX512_FEATURES = "X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL"


def _cap_numpy_simd() -> None:
    if platform.machine().lower() in {"x86_64", "amd64"} and "numpy" not in sys.modules:
        os.environ.setdefault("NPY_DISABLE_CPU_FEATURES", AVX512_FEATURES)


_cap_numpy_simd()
