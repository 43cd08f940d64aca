"""qkdflow blocks: one block per module."""
