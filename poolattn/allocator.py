"""The memory allocator of a `poolattn` process: tcmalloc (else jemalloc) preloaded where one is installed.

PyTorch's CPU performance tuning guide advises a caching allocator for CPU work, and its own launcher
(`python -m torch.backends.xeon.run_cpu --enable-tcmalloc`) does it with LD_PRELOAD. glibc's malloc hands the
freed pages of a step's activations back and faults them in again at the next step, and its heaps fragment as
batch shapes vary. Measured on best_cpu's recipe (40 training steps, Intel Xeon with AVX512-BF16, 2 cores;
docs/results.md#memory-allocator): glibc 294 s, jemalloc 234 s, tcmalloc 188 s, with identical losses at every
step (an allocator places tensors, it computes nothing).

A running process cannot change its allocator, so the `poolattn` entry point executes itself again, once, with
LD_PRELOAD set, before it imports torch (`reexec_with_allocator`). Written here rather than using run_cpu: that
launcher also pins cores and sets OpenMP variables, and it runs scripts, not a console command.

$POOLATTN_ALLOCATOR chooses: `auto` (the default: tcmalloc, else jemalloc, else the system's), `tcmalloc`,
`jemalloc`, `system` (never preload), or a library's path. Linux only; a LD_PRELOAD that already names an
allocator is left as it is.
"""
from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

ENV = "POOLATTN_ALLOCATOR"
LOADED = "POOLATTN_ALLOCATOR_LOADED"  # set in the re-executed process: never execute twice
LIBRARIES = {  # by preference within each allocator: the minimal tcmalloc has no profiler to slow it
    "tcmalloc": ["libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so"],
    "jemalloc": ["libjemalloc.so.2", "libjemalloc.so"],
}
CHOICES = ("auto", *LIBRARIES, "system")


def search_dirs() -> list[Path]:
    """Where installed allocators live: the Python environment's lib (conda's gperftools) and the system's."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = [Path(sys.prefix) / "lib", Path(os.environ.get("CONDA_PREFIX", sys.prefix)) / "lib"]
    for root in ("/usr/local/lib", "/usr/lib", "/lib"):
        dirs += [Path(root) / multiarch, Path(root)] if multiarch else [Path(root)]
    dirs.append(Path("/usr/lib64"))
    return list(dict.fromkeys(dirs))


def find(name: str, dirs: list[Path] | None = None) -> Path | None:
    """The library of allocator `name` (tcmalloc or jemalloc), or None where it is not installed."""
    dirs = search_dirs() if dirs is None else dirs
    for lib in LIBRARIES[name]:
        for d in dirs:
            if (d / lib).is_file():
                return d / lib
    return None


def resolve(choice: str, dirs: list[Path] | None = None) -> Path | None:
    """The library that `choice` ($POOLATTN_ALLOCATOR) names: None for the system's allocator.

    Raises:
        ValueError: an unknown name, or a named allocator that is not installed.
    """
    choice = choice.strip() or "auto"
    dirs = search_dirs() if dirs is None else dirs
    if choice == "system":
        return None
    if choice == "auto":
        return next((lib for name in LIBRARIES if (lib := find(name, dirs)) is not None), None)
    if choice in LIBRARIES:
        lib = find(choice, dirs)
        if lib is None:
            raise ValueError(f"{ENV}={choice}: no {' or '.join(LIBRARIES[choice])} in "
                             f"{', '.join(map(str, dirs))} (Debian/Ubuntu: "
                             f"apt-get install {'libtcmalloc-minimal4' if choice == 'tcmalloc' else 'libjemalloc2'})")
        return lib
    if "/" in choice:
        if not Path(choice).is_file():
            raise ValueError(f"{ENV}={choice}: no such file")
        return Path(choice)
    raise ValueError(f"{ENV}={choice!r} is not an allocator; choose one of {', '.join(CHOICES)} or a library path")


def child_env(choice: str) -> dict[str, str]:
    """This process's environment for a child `poolattn` command that picks allocator `choice` itself: without
    the preload (and the re-executed marker) that this process may run under."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", LOADED)}
    env[ENV] = choice
    return env


def preloaded(ld_preload: str) -> bool:
    """LD_PRELOAD already names a malloc replacement (the user's choice, or our re-executed process)."""
    return any("malloc" in Path(p).name for p in ld_preload.replace(":", " ").split())


def reexec_with_allocator(environ: os._Environ | dict | None = None, execve=os.execve) -> None:
    """Execute this command again with the chosen allocator preloaded; return (doing nothing) where there is
    nothing to do: not Linux, `system`, nothing installed, already preloaded or already re-executed.

    Raises:
        ValueError: $POOLATTN_ALLOCATOR names something unknown or not installed.
    """
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux") or env.get(LOADED) is not None:
        return
    orig = getattr(sys, "orig_argv", None)
    if orig is None or len(sys.argv) < 2 or orig[1 - len(sys.argv):] != sys.argv[1:]:
        return  # not a command line of its own (main() called from Python, as a test does): leave the process be
    if preloaded(env.get("LD_PRELOAD", "")):
        return
    lib = resolve(env.get(ENV, "auto"))
    if lib is None:
        return
    new = dict(env)
    new["LD_PRELOAD"] = f"{lib}:{env['LD_PRELOAD']}" if env.get("LD_PRELOAD") else str(lib)
    new[LOADED] = str(lib)
    # tcmalloc reports every allocation over 1 GiB on stderr; loading a model's weights makes several
    new.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    argv = [sys.executable, *orig[1:]]  # as started: `poolattn ...` (the script) or `python -m poolattn ...`
    execve(sys.executable, argv, new)


def in_use() -> str:
    """The allocator mapped into this process, for environment.json: tcmalloc, jemalloc or system."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    for name in LIBRARIES:
        if f"lib{name}" in maps:
            return name
    return "system"
