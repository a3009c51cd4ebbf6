"""Test harness: run ``__main__.py`` of the current directory under pgha's infra mocks.

Usage: ``python run_under_mocks.py <tests dir> <output json>``. Prints nothing; writes the
resource summary and where ``pgha`` was imported from.
"""

import json
import runpy
import sys


def main() -> None:
    tests_dir, out_path = sys.argv[1], sys.argv[2]
    sys.path.insert(0, tests_dir)
    import infra_mocks  # the harness, not the package under test

    run = infra_mocks.run_program(lambda: runpy.run_path("__main__.py", run_name="__main__"))
    import pgha

    with open(out_path, "w") as fh:
        json.dump({"pgha_file": pgha.__file__, "resources": infra_mocks.summary(run)}, fh)


if __name__ == "__main__":
    main()
