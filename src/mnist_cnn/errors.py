"""Exceptions that carry a one-line message meant for the person at the command line."""


class MnistCnnError(Exception):
    """Base class: the CLI prints ``str(err)`` on one line and exits non-zero."""


class DataError(MnistCnnError):
    """A dataset file is missing, truncated, corrupt or not what it claims to be."""


class DownloadError(MnistCnnError):
    """Every mirror failed for a file; the message names each mirror and why."""


class CheckpointError(MnistCnnError):
    """A run folder or checkpoint is missing, damaged or for another architecture."""


class ConfigError(MnistCnnError):
    """A setting has a value that cannot be used."""


class StorageError(MnistCnnError):
    """A file could not be written: the disk is full, or the folder is not writable."""
