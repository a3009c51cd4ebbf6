"""Jinja2 templates of every file a node receives (installed as ``pgha.templates``)."""
