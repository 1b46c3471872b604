"""Command-line tools (``python -m vlft.tools.<name>``)."""
