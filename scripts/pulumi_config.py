#!/usr/bin/env python3
"""Write Pulumi.yaml's ``config:`` block from pgha's schema (``pgha.spec.schema``).

    venv/bin/python scripts/pulumi_config.py           # rewrite the block in place
    venv/bin/python scripts/pulumi_config.py --check   # exit 1 if it differs

Everything above ``config:`` (name, runtime, the comment) is kept as written.
"""

import argparse
import sys
from pathlib import Path

import yaml

from pgha.spec.schema import pulumi_config

PROJECT = Path(__file__).resolve().parent.parent / "Pulumi.yaml"


def rendered(text: str) -> str:
    head = text[: text.index("\nconfig:\n") + 1]
    block = yaml.safe_dump({"config": pulumi_config()}, sort_keys=False, width=1000, allow_unicode=True)
    return head + block


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if Pulumi.yaml differs")
    args = parser.parse_args()
    text = PROJECT.read_text()
    new = rendered(text)
    if args.check:
        if new != text:
            print(f"{PROJECT} differs from the schema: run scripts/pulumi_config.py", file=sys.stderr)
            return 1
        return 0
    PROJECT.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
