"""Benchmarks: the figures the README quotes, kept out of the product's ``tools/``.

Beside the API and the CLI (top layer), because a benchmark drives the whole product:
``compare`` runs the recommender against RS/TPE/best-default with real training,
``compare_report`` turns its state into tables and plots, ``lodo`` scores the meta-learner
leave-one-dataset-out, and ``synthetic`` plants known effects in a fake KB for tests and
scaling runs. ``metallmix bench ...`` and ``bench/*.py`` call into here; nothing in
``tools/``, ``agents/`` or ``graphs/`` may import it.
"""
