"""Builds the optional C extensions in place: ``python setup.py build_ext --inplace``.

``relays._fastpath``: the relay's known-flow fast path; ``transceivers._media``: the
transceiver's per-frame arithmetic. ``./dev`` runs it whenever a ``.so`` is missing or older
than its source; without them (no compiler, not Linux) the pure-Python paths serve.
"""

from setuptools import Extension, setup

setup(
    packages=[],
    ext_modules=[
        Extension(name, [source], extra_compile_args=[
            "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"])
        for name, source in (("relays._fastpath", "relays/_fastpath.c"),
                             ("transceivers._media", "transceivers/_media.c"))
    ],
)
