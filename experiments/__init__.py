"""One-off studies: each script measured one question once; docs/experiments.md records
what it found, with the figure and the commit. Not part of the package, not run by the test
suite (``python -m pytest experiments`` runs their own smoke tests)."""
