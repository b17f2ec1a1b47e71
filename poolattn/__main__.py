"""The `poolattn` command (and `python -m poolattn`): the memory allocator first, then the command line.

poolattn.allocator may execute the process again with tcmalloc preloaded; it runs before anything imports torch.
"""
from __future__ import annotations

import sys


def main() -> None:
    from .allocator import reexec_with_allocator

    try:
        reexec_with_allocator()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    from .cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
