"""What every check of the conformance kit raises."""


class ConformanceError(AssertionError):
    """An objective does not hold to the plugin contract."""


# Shown (in a failed test's report) and pickled as prefopt.testing.ConformanceError,
# the name plugin authors import it by.
ConformanceError.__module__ = "prefopt.testing"
