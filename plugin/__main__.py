"""pgha as a Pulumi plugin (PulumiPlugin.yaml's ``main``): serves PostgresCluster and Observability to
programs in any language, with the schema ``pgha.infra.provider`` builds.

The repository root's ``__main__.py`` is the pgha Pulumi program, so the plugin's entry point
lives here; the plugin's venv gets pgha from requirements.txt (``-e .``).
"""

import sys

from pgha.infra.provider import host

if __name__ == "__main__":
    # The engine passes the plugin directory, then its own address and flags: pulumi's main() reads them.
    host(sys.argv[1:])
