"""The logit store format (docs/FORMAT.md): metadata and its checks, the arrays of every store
kind and the one way to create them, chunk digests, codecs, sparse rows, where a store may be
written, and storage back ends. numpy and zarr only: a store is readable without torch."""
