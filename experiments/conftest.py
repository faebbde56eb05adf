# the test suite's fixtures (data paths, tiny model directories, thread limits)
from tests.conftest import *  # noqa: F401,F403
