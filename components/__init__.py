"""pgha: highly available PostgreSQL on AWS as code (installed as the ``pgha`` package)."""
