"""Only the C extension lives here; everything else is in pyproject.toml.

collectors._fastjson is the collector's decoder (audit records -> Arrow buffers). It is
optional: without a C compiler the install succeeds and the collector decodes in Python.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("collectors._fastjson", ["collectors/_fastjson.c"],
                             extra_compile_args=["-O3", "-std=c99"], optional=True)])
