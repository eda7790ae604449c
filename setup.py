"""The one compiled part: pipeline.volume._xtsmask (see pipeline/volume/_xtsmask.c).

Optional: without a C compiler and Python's headers the build skips it and
pipeline.volume.xts computes the same masks with numpy, at about half the speed
(xts.encrypt measured 0.8-1.2 GB/s a core that way, 1.4-1.6 GB/s with this).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("pipeline.volume._xtsmask", ["pipeline/volume/_xtsmask.c"],
                             optional=True, extra_compile_args=["-O3", "-std=c11"])])
