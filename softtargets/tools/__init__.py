"""What a receiving team runs on a store: `verify` (every chunk of every array, by rule and
digest) and `inspect` (provenance, layout, objects and bytes)."""
