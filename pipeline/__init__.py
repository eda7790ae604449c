"""pipeline: offline data seeding onto encrypted drives."""

__version__ = "0.1.0"
