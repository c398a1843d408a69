"""Stage-1 write sessions live in softtargets.write.session (and their options in
softtargets.write.options); these names stay importable from here."""

from softtargets.write.options import (AUTO_SHARD_MIN_CHUNKS, RESUME_IGNORED, SHARD_BYTES,
                                       WriteOptions, check_resumable, effective_shard_rows,
                                       store_exists)
from softtargets.write.rows import unit_ok
from softtargets.write.session import DELAY_ENV, RowArray, WriteSession

__all__ = ["AUTO_SHARD_MIN_CHUNKS", "DELAY_ENV", "RESUME_IGNORED", "SHARD_BYTES", "RowArray",
           "WriteOptions", "WriteSession", "check_resumable", "effective_shard_rows",
           "store_exists", "unit_ok"]
