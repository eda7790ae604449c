"""The drive format, pure (no I/O): records, superblock, segments, index, trailer (format)
and the extent codecs (codec).  The bottom layer: everything may import it, it imports
nothing of pipeline but errors."""
