"""Package exceptions. Every error a user can cause derives from SofttargetsError.

Messages say what was got, what is allowed, and how to fix it.
"""


class SofttargetsError(Exception):
    """Base class of every softtargets error."""


class ConfigError(SofttargetsError, ValueError):
    """An option or configuration value is out of range."""


class DatasetNotFoundError(SofttargetsError, FileNotFoundError):
    """The dataset files are not where we looked."""


class DatasetError(SofttargetsError):
    """Dataset files exist but are malformed or fail their checksum."""


class LabelError(DatasetError, ValueError):
    """A label is not an integer class index in [0, num_classes)."""


class CheckpointError(SofttargetsError):
    """A model checkpoint is missing, malformed or of the wrong architecture."""


class ValidationLeakError(CheckpointError):
    """A teacher was trained on rows that this run holds out for validation (--val-rows)."""


class StoreError(SofttargetsError):
    """A logit store is malformed, damaged or cannot be written."""


class StoreExistsError(StoreError, FileExistsError):
    """The store path already exists and overwriting was not asked for."""


class ForeignDataError(StoreExistsError):
    """The path holds something softtargets did not create; it is never deleted or replaced."""


class StoreWriteError(StoreError):
    """The store's destination cannot be written: a read-only file system, a path below a file."""


class IncompleteStoreError(StoreError):
    """The store was never finalized (its writer crashed or is still running)."""


class StoreMetadataError(StoreError):
    """A store's metadata or array layout breaks a rule of the format (docs/FORMAT.md)."""


class StoreMismatchError(StoreError):
    """The store was computed on other data than the data it is used with."""


class SparseStoreError(StoreError):
    """A sparse (top-k / sampled) store was given to a dense reader, or is used wrongly."""


class SparseTemperatureError(SparseStoreError, ValueError):
    """A sparse store is read at a temperature whose tail mass it does not hold."""


class LogitValueError(StoreError, ValueError):
    """Logits are non-finite or overflow float16."""


class TrainingDivergedError(SofttargetsError):
    """The training loss became NaN or infinite."""


# --- verify, resume, locks, object storage ---


class VerifyError(StoreError):
    """`softtargets verify` found damage or a mismatch; the report names chunks and rows."""


class ResumeMismatchError(StoreError):
    """--resume was asked for a store written with another teacher, dataset or settings."""


class StoreLockedError(StoreError):
    """Another live process holds the write lease of the store."""


class RemoteStoreError(StoreError):
    """An fsspec URL cannot be reached: missing credentials, access denied, no such bucket."""


class AppendError(StoreError, ValueError):
    """Rows given to LogitWriter.append are wrong: unknown or repeated sample ids, a shape that
    does not match the store, or a tensor attached to the autograd graph."""


class RecordError(SofttargetsError, ValueError):
    """Top-k log-prob records (JSONL / npz / arrays) are malformed or do not fit the data."""
