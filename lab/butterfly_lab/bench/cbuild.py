"""The bench's C programs: compiled from the sources shipped beside this module.

A frame generator in Python would measure Python, so the frame benchmarks
drive C programs (``c/*.c``). No binary lives in the repository: each is
compiled with gcc once per version of its source, into a cache folder
(``$BUTTERFLY_BENCH_CACHE``, else ``$XDG_CACHE_HOME/butterfly-bench``, else
``~/.cache/butterfly-bench``), the file named by the source's hash so that
a changed source is never run stale. ``tools/setup --dev`` builds them
(``python -m butterfly_lab.bench.cbuild``); a bench that finds one missing
builds it then.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from butterfly_lab.bench.figures import BenchError

__all__ = ["PROGRAMS", "cache_folder", "program"]

PROGRAMS = ("bfframes",)
"""Each is ``c/<name>.c``, a single file."""
CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11")


def cache_folder() -> Path:
    explicit = os.environ.get("BUTTERFLY_BENCH_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "butterfly-bench"


def _source(name: str) -> Path:
    return Path(__file__).with_name("c") / f"{name}.c"


def program(name: str) -> str:
    """The path of the compiled ``name``, compiling it first if this source's
    build is not cached; BenchError when gcc is missing or fails."""
    if name not in PROGRAMS:
        raise BenchError(f"no C program {name!r} in the bench (known: {', '.join(PROGRAMS)})")
    source = _source(name)
    digest = hashlib.sha256(source.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:16]
    built = cache_folder() / f"{name}-{digest}"
    if built.exists():
        return str(built)
    compiler = shutil.which("gcc")
    if compiler is None:
        raise BenchError(
            f"gcc is needed to build {source.name}: apt-get install gcc libc6-dev"
            " (tools/setup --dev installs both)"
        )
    built.parent.mkdir(parents=True, exist_ok=True)
    # compiled beside its final name, then renamed: a concurrent run never sees half a file
    with tempfile.TemporaryDirectory(dir=built.parent) as scratch:
        output = os.path.join(scratch, name)
        done = subprocess.run(
            [compiler, *CFLAGS, "-o", output, str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"gcc failed on {source}:\n{done.stderr.strip()}")
        os.replace(output, built)
    return str(built)


def main() -> int:
    """Build every program (tools/setup --dev runs this); print where each is."""
    try:
        for name in PROGRAMS:
            print(program(name))
    except BenchError as error:
        print(f"butterfly_lab.bench.cbuild: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
