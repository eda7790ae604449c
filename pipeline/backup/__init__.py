"""The backup repository: content-defined chunks, compressed, sealed, packed, indexed.

``format`` (sans-I/O byte layout), ``crypto`` (keys, sealing), ``backend`` (directory or
storage container), ``repo`` (open/init, index, snapshots), ``walk`` (source tree, file
chunking), ``archive`` (the backup's Trio stages), ``restore``, ``offline`` (the seed's
settings files and checks), ``locate`` (``--from``/``--container``), ``ui`` (progress).
The layout is documented in docs/FORMAT.md, "Backup repository".
"""
