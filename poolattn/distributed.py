"""The one place that says which process this is: (rank, world size) of the process group when one is open, else
what a launcher (torchrun, accelerate launch) put in RANK / WORLD_SIZE before any group exists, else (0, 1)."""
from __future__ import annotations

import os

import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of this process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """True on the process that writes shared files and prints (rank 0)."""
    return world()[0] == 0


def launched() -> bool:
    """Whether a launcher started several processes (a group may not be open yet)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def ensure_group(device_type: str = "cpu") -> bool:
    """Open the launcher's process group if none is open yet (gloo on CPU, nccl on CUDA), so one group serves a whole
    experiment: accelerate reuses an open group. Returns whether a group is open."""
    if not (dist.is_available() and launched()):
        return dist.is_available() and dist.is_initialized()
    if not dist.is_initialized():
        import datetime

        # Evaluation keeps every rank busy (sharded encoding), but a design's mteb scoring on CPU can take a while:
        # a generous collective timeout rather than the 10-minute default.
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=datetime.timedelta(hours=2))
    close_at_exit()
    return True


_closing = False


def close_at_exit() -> None:
    """Destroy the open process group when the interpreter exits (once per process; a no-op without a group).
    Left open, gloo's worker threads are still joinable when the process's static objects are destroyed, and
    std::thread's destructor calls std::terminate: "terminate called without an active exception", exit code
    -6, after all the work was done. Destroying the group makes that rarer but does not end it: 2 gloo ranks doing
    all_gather + all_reduce + barrier, then destroy_process_group, still aborted some torchrun launches (measured:
    docs/scaling.md#ending-a-process-group). `exit_process` is the whole fix; this is the part that also serves
    library users calling our functions from their own scripts."""
    global _closing
    if _closing or not (dist.is_available() and dist.is_initialized()):
        return
    import atexit

    atexit.register(_destroy_group)
    _closing = True


def _destroy_group() -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # exiting anyway; never mask the run's own outcome
            pass


def opened_group() -> bool:
    """Whether this process opened (or was handed) a process group that `close_at_exit` looks after."""
    return _closing


def exit_process(code: int = 0) -> None:
    """End a process that held a process group: destroy the group, run the atexit handlers, flush the streams,
    then os._exit(code), skipping the C++ static destructors where gloo's threads call std::terminate (see
    close_at_exit). The same worker exited cleanly in every launch this way (measured:
    docs/scaling.md#ending-a-process-group). Written by hand because neither torch nor accelerate offers it (torch's
    own atexit destroy was proposed and abandoned: pytorch/pytorch#179291)."""
    import atexit
    import logging
    import sys

    _destroy_group()
    atexit._run_exitfuncs()  # what normal exit would run: our own handlers, logging, tempfile cleanup
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe must not turn a finished run into a failure
            pass
    os._exit(code)


def broadcast(obj):
    """Rank 0's `obj` on every rank (identity without a group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_all(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank ([obj] without a group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
