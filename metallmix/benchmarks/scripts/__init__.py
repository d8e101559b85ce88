"""The benchmark scripts behind ``bench/results`` and the benchmark pages.

One home for benchmark code: the library parts the CLI runs (``metallmix bench lodo``,
``metallmix bench compare``) sit one level up in :mod:`metallmix.benchmarks`; the scripts
that measure one question each (latency, judge quality, portfolio and regime LODO, ...)
live here, and ``bench/NAME.py`` is a three-line launcher that keeps the documented
``python bench/NAME.py ...`` commands working. ``bench/`` otherwise holds what they write
(``bench/results``) and the page generator ``bench/make_pages.py``.

Not shipped in the wheel (pyproject lists ``metallmix.benchmarks`` but not this package):
the scripts read and write the repository's folders, so they run from a checkout.
"""
