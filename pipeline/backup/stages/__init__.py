"""The stages of backup's two pipelines, one module each; the wiring lives elsewhere.

Backup (wired by ``backup/archive.py``): walk (source -> node batches), read (files ->
new chunks), tree (nodes -> tree chunks), seal (chunks -> sealed chunks), pack (sealed
chunks -> packs), upload (packs -> storage); ``messages`` holds what travels between them.

Restore (wired by ``backup/restore.py``): plan (tree -> ranges of packs), layout (the
skeleton before, the finish after), fetch (ranges -> chunks written in place), all
working on the one state ``files.Files``.

A stage gets its channel ends, limiters and state as arguments, opens no nursery and
closes the ends it was given.
"""
