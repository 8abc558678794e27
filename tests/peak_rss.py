"""Test support: run a command and measure the peak RSS of it and its descendants.

The command runs under a small Python wrapper whose only child it is, so the wrapper's
`RUSAGE_CHILDREN` peak belongs to that command alone (or a process it waited for, such as
pg_restore), not to anything else the test session ran before.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

_WRAPPER = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, file=sys.stderr)
sys.exit(code)
"""


def run_measuring_peak_rss(argv: Sequence[str], timeout: float = 300) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run `argv`; returns its completed process (stderr without the wrapper's line) and the
    peak RSS in bytes of the largest process in its tree."""
    result = subprocess.run([sys.executable, "-c", _WRAPPER, *argv], capture_output=True, text=True,
                            timeout=timeout)
    *stderr, peak = result.stderr.rstrip("\n").split("\n")
    result.stderr = "\n".join(stderr)
    return result, int(peak)
