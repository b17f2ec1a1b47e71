"""poolattn.allocator: which library $POOLATTN_ALLOCATOR names, the one re-execution of a command with it preloaded,
and a command under tcmalloc computing what it computes under the system's malloc (about these functions and this
machine's installed allocators)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from poolattn import allocator


def test_auto_prefers_tcmalloc_then_jemalloc_then_the_system(tmp_path):
    dirs = [tmp_path]
    assert allocator.resolve("auto", dirs) is None  # nothing installed: the system's malloc, no error
    (tmp_path / "libjemalloc.so.2").touch()
    assert allocator.resolve("auto", dirs) == tmp_path / "libjemalloc.so.2"
    (tmp_path / "libtcmalloc.so.4").touch()
    assert allocator.resolve("auto", dirs) == tmp_path / "libtcmalloc.so.4"
    (tmp_path / "libtcmalloc_minimal.so.4").touch()  # the minimal build (no profiler) before the full one
    assert allocator.resolve("auto", dirs) == tmp_path / "libtcmalloc_minimal.so.4"
    assert allocator.resolve("jemalloc", dirs) == tmp_path / "libjemalloc.so.2"
    assert allocator.resolve("system", dirs) is None
    assert allocator.resolve(str(tmp_path / "libjemalloc.so.2"), dirs) == tmp_path / "libjemalloc.so.2"


def test_an_unknown_or_missing_allocator_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="choose one of auto, tcmalloc, jemalloc, system or a library path"):
        allocator.resolve("mimalloc", [tmp_path])
    with pytest.raises(ValueError, match="apt-get install libtcmalloc-minimal4"):
        allocator.resolve("tcmalloc", [tmp_path])
    with pytest.raises(ValueError, match="no such file"):
        allocator.resolve(str(tmp_path / "libnothing.so"), [tmp_path])


@pytest.fixture
def command_line(monkeypatch, tmp_path):
    """This process as `poolattn train c.yaml` started it, with a tcmalloc in tmp_path only."""
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.touch()
    monkeypatch.setattr(allocator, "search_dirs", lambda: [tmp_path])
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(sys, "argv", ["/env/bin/poolattn", "train", "c.yaml"])
    monkeypatch.setattr(sys, "orig_argv", ["/env/bin/python", "/env/bin/poolattn", "train", "c.yaml"])
    return lib


def test_the_command_executes_itself_once_with_the_allocator_preloaded(command_line):
    calls = []
    allocator.reexec_with_allocator({"PATH": "/bin"}, execve=lambda *a: calls.append(a))
    (exe, argv, env), = calls
    assert exe == sys.executable and argv == [sys.executable, "/env/bin/poolattn", "train", "c.yaml"]
    assert env["LD_PRELOAD"] == str(command_line) and env[allocator.LOADED] == str(command_line)
    assert env["PATH"] == "/bin"
    calls.clear()  # an unrelated preload stays, after ours
    allocator.reexec_with_allocator({"LD_PRELOAD": "/opt/libfoo.so"}, execve=lambda *a: calls.append(a))
    assert calls[0][2]["LD_PRELOAD"] == f"{command_line}:/opt/libfoo.so"


@pytest.mark.parametrize("env", [{allocator.LOADED: "/x/libtcmalloc_minimal.so.4"},  # the re-executed process
                                 {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"},  # the user's own allocator
                                 {allocator.ENV: "system"}])
def test_nothing_is_executed_again_when_there_is_nothing_to_do(command_line, env):
    def fail(*a):
        raise AssertionError(f"executed again with {env}")

    allocator.reexec_with_allocator(env, execve=fail)


def test_main_called_from_python_is_never_executed_again(command_line, monkeypatch):
    """A test calling cli's main() runs inside pytest: its command line is pytest's, which must not run again."""
    monkeypatch.setattr(sys, "orig_argv", ["/env/bin/python", "-m", "pytest", "-q"])

    def fail(*a):
        raise AssertionError("executed pytest again")

    allocator.reexec_with_allocator({}, execve=fail)
    monkeypatch.setattr(sys, "argv", ["/env/bin/poolattn"])  # no arguments: the help, nothing to speed up
    allocator.reexec_with_allocator({}, execve=fail)


@pytest.mark.skipif(allocator.find("tcmalloc") is None or not sys.platform.startswith("linux"),
                    reason="tcmalloc is not installed (scripts/setup.sh installs it where apt-get can)")
def test_a_command_under_tcmalloc_computes_what_it_computes_under_the_system_malloc(tiny_llama, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("a first sentence\nand a second, longer one about embeddings\n")
    out = {}
    for choice in ("system", "tcmalloc"):
        run_env = allocator.child_env(choice)
        version = subprocess.run([sys.executable, "-m", "poolattn", "--version"], capture_output=True, text=True,
                                 env=run_env, timeout=120)
        assert version.returncode == 0 and f"(memory allocator: {choice})" in version.stdout, version.stderr
        out[choice] = tmp_path / f"{choice}.npy"
        proc = subprocess.run([sys.executable, "-m", "poolattn", "encode", "--model", tiny_llama, "--input",
                               str(texts), "--output", str(out[choice]), "--device", "cpu"], capture_output=True,
                              text=True, env=run_env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_array_equal(np.load(out["system"]), np.load(out["tcmalloc"]))
