"""``python -m oneprune_ext info``: print how the extension was built and what it can use."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oneprune_ext", description=__doc__)
    parser.add_argument("command", choices=["info"], help="info: print build_info() as key: value lines")
    args = parser.parse_args(argv)
    if args.command == "info":
        from . import build_info

        for key, value in build_info().items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
