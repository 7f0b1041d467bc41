"""runledger's benchmark suite (issue 3): one module per benchmark, ``python -m bench.<name>``.

Every benchmark prints the median of several rounds next to a reference measured in the same run,
the ratio between them and its target (PASS/MISS), and appends a row to ``bench/RESULTS.md``.
See ``bench/README.md``.
"""
