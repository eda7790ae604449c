import os
import sys

from pipeline.cli import main

code = main()
try:
    sys.stdout.flush()
except BrokenPipeError:  # `pipeline ... | head` left before the last line: not an error of ours
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
raise SystemExit(code)
