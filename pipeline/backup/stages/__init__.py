"""The stages of backup's two pipelines, one module each; the wiring lives elsewhere.

Backup (wired by ``backup/archive.py``): walk (source -> node batches), read (files ->
new chunks), tree (nodes -> tree chunks), seal (chunks -> sealed chunks), pack (sealed
chunks -> packs), upload (packs -> storage); ``messages`` holds what travels between them.

Restore (wired by ``backup/restore.py``): plan (tree -> ranges of packs) here; the
skeleton before, fetch (ranges -> chunks written in place) and the finish after in
``backup/beneath.py`` (every write relative to its directory's fd), all working on the
one state ``files.Files``.

A stage gets its channel ends, limiters and state as arguments, opens no nursery and
closes the ends it was given.
"""
