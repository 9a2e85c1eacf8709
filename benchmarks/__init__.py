"""End-to-end benchmarks of omniroute: ``python -m benchmarks`` (``make bench``).

See docs/benchmarks.md for what each figure means and how it is measured.
"""
