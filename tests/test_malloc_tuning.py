"""The runtime keeps large message buffers in the heap (transport.tune_malloc): a buffer allocated in one thread and
freed in another (ZeroMQ's I/O thread and a block thread) is reused, not faulted in from the kernel again."""
import platform
import subprocess
import sys

import pytest

PATTERN = r"""
import sys, resource, threading, queue
import numpy as np
from qkdflow.runtime.transport import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc() and tune_malloc()          # idempotent
q = queue.Queue(maxsize=4)
def producer():
    for _ in range(400):
        a = np.empty(1 << 20, np.uint8)
        a[::4096] = 1                              # touch every page, as a received message is written
        q.put(a)
    q.put(None)
t = threading.Thread(target=producer)
t.start()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
while (a := q.get()) is not None:
    del a
t.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PATTERN, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning applies to glibc only")
def test_tuned_allocator_reuses_cross_thread_megabyte_buffers():
    plain, tuned = _faults("plain"), _faults("tuned")
    # 400 buffers of 256 pages each: with the thresholds fixed, the same heap memory serves them all
    assert tuned < 400 // 4
    assert tuned * 10 < plain


def test_tune_malloc_reports_whether_it_applied():
    from qkdflow.runtime.transport import tune_malloc

    assert tune_malloc() is (platform.libc_ver()[0] == "glibc")
