"""The drive format: the sans-I/O record layout (format) and extent codecs (codec)."""
