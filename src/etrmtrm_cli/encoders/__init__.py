"""Encoders that read a puzzle's demonstration pairs. Importing this package registers the in-tree ones."""
