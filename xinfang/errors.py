"""Errors users see: each names what is wrong (file, row, field) in plain words."""


class XinfangError(Exception):
    """Base class for errors that are reported to the user without a traceback."""


class DataError(XinfangError):
    """Bad input data: the message names the file, row and column."""


class ModelError(XinfangError):
    """A model, encoder or bundle that cannot be loaded or fails its checks."""


class IndexError_(XinfangError):
    """A vector index that cannot be loaded, written or searched."""
