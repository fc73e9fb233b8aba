"""The error every evaluation input check raises."""


class EvalInputError(Exception):
    """Bad input to the evaluation (a checkpoint, a data file, a task name): the message names it."""
