"""Builders the tests (and benchmarks) share: small stores, models, configs and workflow runs.

One module per subject, imported as ``from builders.<subject> import ...`` (``tests/`` is on the path
under pytest; benchmarks put it there themselves). Fixtures live in ``conftest.py``; tests live only in
``test_*.py`` files.
"""
