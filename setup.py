from setuptools import setup

# cffi builds pygup._core for the limited API (Py_LIMITED_API, _core.abi3.so);
# tag the wheel so: one wheel serves every CPython from 3.11 on
setup(cffi_modules=["build.py:ffibuilder"],
      options={"bdist_wheel": {"py_limited_api": "cp311"}})
