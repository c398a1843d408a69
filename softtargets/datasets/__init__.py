"""Datasets for softtargets: the protocol a user's dataset follows, the adapters softtargets
ships (IDX, image folders, CIFAR, token files, in-memory arrays, any map-style dataset), and the
per-unit input digests that bind a store's rows to the data. See docs/DATASETS.md."""

from softtargets.datasets.base import BaseDataset, MapDataset, check_labels
from softtargets.datasets.cifar import CIFAR
from softtargets.datasets.digest import InputDigest, fingerprint, unit_input_digest
from softtargets.datasets.idx import IDXDataset
from softtargets.datasets.imagefolder import ImageFolder
from softtargets.datasets.memory import TensorDataset, WrappedDataset, from_tensors, wrap
from softtargets.datasets.tokenizer import TokenizerIdentity
from softtargets.datasets.tokens import TokenSequences

__all__ = [
    "BaseDataset", "CIFAR", "IDXDataset", "ImageFolder", "InputDigest", "MapDataset",
    "TensorDataset", "TokenSequences", "TokenizerIdentity", "WrappedDataset", "check_labels", "fingerprint",
    "from_tensors", "unit_input_digest", "wrap",
]
