"""Offline jobs on top of the segjax library: `python -m segjax.tools.<name>` or `segjax <name>`."""
