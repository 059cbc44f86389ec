"""Command line: ``liptriton demo [options]`` (also ``python -m liptriton demo``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``liptriton <command>``.

    Args:
        argv: arguments after the program name.

    Returns:
        The exit status of the command.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: liptriton demo [--help] [options]")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from liptriton.demo import main as demo

        return demo(rest)
    print(f"liptriton: unknown command {command!r} (expected 'demo')", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
