"""Client-side tools for the edge (no Django): a WHIP caller on aiortc and a local-edge launcher,
shared by ``manage.py call``, the tests and the benchmarks."""
