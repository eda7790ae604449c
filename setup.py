"""The one compiled part: pipeline._xtsmask (see pipeline/_xtsmask.c).

Optional: without a C compiler and Python's headers the build skips it and
pipeline.xts computes the same masks with numpy, about three times slower.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("pipeline._xtsmask", ["pipeline/_xtsmask.c"], optional=True,
                             extra_compile_args=["-O3", "-std=c11"])])
