"""Backup's stages, one module each; ``backup/archive.py`` wires them (see its docstring).

walk (source -> node batches), read (files -> new chunks), tree (nodes -> tree chunks),
seal (chunks -> sealed chunks), pack (sealed chunks -> packs), upload (packs -> storage);
``messages`` holds what travels between them.  A stage gets its channel ends, limiters
and state as arguments, opens no nursery and closes the ends it was given.
"""
