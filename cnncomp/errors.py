"""Errors users see. Each carries a one-line message that names what was wrong and where."""


class CnnCompError(Exception):
    """Base of every error cnncomp reports to a user as one line (the CLI prints `error: <message>`)."""


class GraphError(CnnCompError):
    """A graph that is malformed: unknown node or op, wrong operands, bad attributes, cycles."""


class ShapeError(GraphError):
    """A graph whose shapes break an op's rule (sizes that do not fit, channels that do not divide)."""


class ModelLoadError(CnnCompError):
    """A model description that cannot be read (missing file, unknown format, bad contents)."""


class InputError(CnnCompError):
    """Run-time inputs that do not match what the compiled graph expects."""
