"""A sanity check every sweep run must pass (a sweep test asserts something)."""


def learned(result, num_classes=10):
    """The run did better than guessing (a sanity check on every sweep run)."""
    return result.best_acc > 100.0 / num_classes
