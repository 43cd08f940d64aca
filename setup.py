"""Optional C extension for exact GF(2) Toeplitz hashing (qkdflow.distill._gf2mul).

All project metadata lives in pyproject.toml; this file only declares the extension.  It is
``optional=True``: where no C compiler is available the build is skipped and qkdflow falls back to the
float64-FFT path (qkdflow.distill.toeplitz.BACKEND tells which one is active).
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
        )
    ]
)
