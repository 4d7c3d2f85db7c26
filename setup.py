"""Builds the relay's optional C fast path in place: ``python setup.py build_ext --inplace``.

``./dev`` runs it whenever the ``.so`` is missing or older than its source; without it (no
compiler, not Linux) the relay runs its pure-Python path.
"""

from setuptools import Extension, setup

setup(
    packages=[],
    ext_modules=[Extension(
        "relays._fastpath", ["relays/_fastpath.c"],
        extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
    )],
)
