"""Optional C extensions: exact GF(2) Toeplitz hashing (qkdflow.distill._gf2mul) and the layered LDPC decoder
(qkdflow.distill._ldpc).

All project metadata lives in pyproject.toml; this file only declares the extensions (and two small exact
fast paths, each bit-identical to its numpy reference: qkdflow._prng, the counter-based generator's fused loop, and
qkdflow.distill._poly61, the polynomial hash mod 2^61 - 1 of verification and authentication).  It is
``optional=True``: where no C compiler is available the build is skipped and qkdflow falls back to the
float64-FFT path (qkdflow.distill.toeplitz.BACKEND tells which one is active) and the LDPC decoder to its
numba/numpy paths (qkdflow.distill.ldpc.DECODER).
"""
import sys

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "qkdflow.distill._gf2mul",
            sources=["qkdflow/distill/_gf2mul.c"],
            optional=True,
            # -O3 (some Pythons' default CFLAGS say -O2): GCC then vectorises the Karatsuba XOR passes,
            # ~1.3x measured at n = 1e7; later flags override earlier ones.
            extra_compile_args=["-O3"] if sys.platform != "win32" else [],
        ),
        Extension(
            "qkdflow.distill._poly61",
            sources=["qkdflow/distill/_poly61.c"],
            optional=True,
            extra_compile_args=["-O3"] if sys.platform != "win32" else [],
        ),
        Extension(
            "qkdflow._prng",
            sources=["qkdflow/_prng.c"],
            optional=True,
            extra_compile_args=["-O3"] if sys.platform != "win32" else [],
        ),
        Extension(
            "qkdflow.distill._ldpc",
            sources=["qkdflow/distill/_ldpc.c"],
            optional=True,
            extra_compile_args=["-O3"] if sys.platform != "win32" else [],
        ),
    ]
)
