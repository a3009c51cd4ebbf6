"""EC2 user-data size of every member, for each arch x storage combination, and the size of
what comes through the bucket instead (the configuration manifest and the agent zipapp).

Real certificate sizes (a CA and member certificates like those Pulumi makes), six members
(the most pgha allows), the largest instance of each family. Prints a table; EC2's limit is
16384 bytes of user-data before base64.

    venv/bin/python bench/user_data_size.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pgha.render import (  # noqa: E402
    EC2_USER_DATA_LIMIT,
    bucket_files,
    cloud_config,
    config_manifest_bytes,
    user_data_bytes,
)
from render_fixtures import COMBINATIONS, ec2_context, make_spec  # noqa: E402


def main() -> None:
    print(f"{'combination':<14} {'instance':<14} {'members':>7} {'cloud-config':>13} {'user-data':>10} "
          f"{'of limit':>8} {'via S3':>8}")
    for name, values in sorted(COMBINATIONS.items()):
        spec = make_spec({**values, "replicas": 5})
        ctx = ec2_context(spec)
        sizes = [len(user_data_bytes(spec, m, ctx)) for m in spec.members]
        plain = max(len(cloud_config(spec, m, ctx).encode()) for m in spec.members)
        bulk = sum(len(b.content) for b in bucket_files(spec, spec.members[0], ctx)) + max(
            len(config_manifest_bytes(spec, m, ctx)) for m in spec.members)
        print(f"{name:<14} {spec.instance_type:<14} {len(sizes):>7} {plain:>13} {max(sizes):>10} "
              f"{max(sizes) / EC2_USER_DATA_LIMIT:>8.0%} {bulk:>8}")


if __name__ == "__main__":
    main()
