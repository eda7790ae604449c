"""The backup repository: content-defined chunks, compressed, sealed, packed, indexed.

``format`` (sans-I/O byte layout), ``crypto`` (keys, sealing), ``backend`` (directory or
storage container), ``repo`` (open/init, index, snapshots), ``walk`` (source tree, file
chunking), ``archive`` (the backup's wiring: nursery and channels) with ``stages/`` (one
module per stage), ``restore``, ``offline`` (the seed's
settings files and checks), ``locate`` (``--from``/``--container``), ``ui`` (progress).
The layout is documented in docs/FORMAT.md, "Backup repository".
"""
