"""Coverage-guided fuzz targets (atheris), one module per target, and their runner.

Each target module has ``TestOneInput(data)`` (raises AssertionError, or lets an unexpected
exception escape, when the code under test misbehaves), ``seeds()`` (a few inputs that reach
deep paths the mutator would take long to find, written to a fresh corpus by the runner) and
a ``__main__`` that hands both to atheris. ``python -m fuzz.run`` runs them; see README.md,
"Fuzzing".
"""
