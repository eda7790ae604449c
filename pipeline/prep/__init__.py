"""prep: the copy machine's pipeline (staging directory -> encrypted drives); ``run`` is
its wiring, one module per stage."""
