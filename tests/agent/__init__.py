"""The node agent\x27s tests (pgha.agent), one file per module."""
