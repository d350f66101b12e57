"""Bridges from the single-file algorithms in ``algos/`` to other engines (``integrations/verl``: verl)."""
