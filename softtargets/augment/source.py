"""`Views`, the option that asks stage 1 for V augmented views per sample, and `ViewInputs`,
a dataset's views as the teacher's inputs.

    write_logits(teacher, data, "views.zarr", views=Views(count=4, augment="shift=2,flip=1"))

View v of sample s is drawn from (seed, s, v) only (views.draw_params), so any row's views can
be recomputed alone: on resume, by another rank, and by stage 2 when it replays them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from softtargets.augment.views import (AugmentSpec, augment_images, draw_params, parse_spec,
                                       views_info)
from softtargets.errors import ConfigError

KEYS = ("count", "augment", "seed", "clean_view0")


@dataclasses.dataclass(frozen=True)
class Views:
    """V augmented views per sample: `count` V, `augment` an AugmentSpec or its text form
    ('shift=2,rotate=10,flip=1', or a JSON file), `seed` of the per-(sample, view) parameters,
    `clean_view0` (None: the spec's; True: view 0 is the unaugmented input, False: augmented
    like the others). Normalised when made: `augment` is an AugmentSpec holding clean_view0."""

    count: int
    augment: AugmentSpec | str = AugmentSpec()
    seed: int = 0
    clean_view0: bool | None = None

    def __post_init__(self) -> None:
        for name in ("count", "seed"):
            value = getattr(self, name)
            least = 1 if name == "count" else 0
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                    or value < least:
                raise ConfigError(f"Views {name} must be an integer >= {least}, got {value!r}")
        spec = self.augment
        if isinstance(spec, str):
            spec = parse_spec(spec)
        if not isinstance(spec, AugmentSpec):
            raise ConfigError(f"Views augment must be an AugmentSpec or a spec such as "
                              f"'shift=2,flip=1', got {type(spec).__name__}")
        if self.clean_view0 is not None:
            if not isinstance(self.clean_view0, bool):
                raise ConfigError(f"Views clean_view0 must be True, False or None, got "
                                  f"{self.clean_view0!r}")
            spec = dataclasses.replace(spec, clean_view0=self.clean_view0)
        object.__setattr__(self, "count", int(self.count))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "augment", spec)
        object.__setattr__(self, "clean_view0", spec.clean_view0)

    @property
    def spec(self) -> AugmentSpec:
        """The augmentation spec (normalised `augment`)."""
        return self.augment  # type: ignore[return-value]

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "augment": self.spec.to_json(), "seed": self.seed,
                "clean_view0": self.clean_view0}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Views:
        unknown = sorted(set(d) - set(KEYS)) if isinstance(d, dict) else ["(not an object)"]
        if unknown:
            raise ConfigError(f"views options have unknown keys {unknown}; allowed: "
                              f"{list(KEYS)}")
        augment = d.get("augment", {})
        return cls(count=d.get("count", 0), seed=d.get("seed", 0),
                   augment=AugmentSpec.from_json(augment) if isinstance(augment, dict)
                   else augment, clean_view0=d.get("clean_view0"))

    @classmethod
    def of_info(cls, info: dict[str, Any]) -> Views:
        """The Views a store's `views` attribute records (docs/FORMAT.md "Augmented views")."""
        return cls(count=int(info["views"]), augment=AugmentSpec.from_json(info["augment"]),
                   seed=int(info["seed"]))

    def info(self) -> dict[str, Any]:
        """The store attribute `views`."""
        return views_info(self.spec, views=self.count, seed=self.seed)

    @property
    def num_params(self) -> int:
        """P, the columns of view_params."""
        return len(self.spec.param_names)

    def params(self, sample_ids: np.ndarray) -> np.ndarray:
        """(R, V, P) float32 parameters of every view of `sample_ids` (R,)."""
        return draw_params(self.spec, seed=self.seed, sample_ids=np.asarray(sample_ids),
                           views=self.count)


class ViewInputs:
    """A dataset's V views per row as teacher inputs: `inputs(rows)` is (R*V, *item) float32,
    row r's views consecutive (`flat`: (R*V, D), as the command line's IDX teachers take
    them). Anything with `inputs(rows)` and `ids(rows)` (a softtargets dataset) works."""

    def __init__(self, dataset: Any, views: Views, *, flat: bool = False) -> None:
        self.dataset, self.views, self.flat = dataset, views, flat

    def __len__(self) -> int:
        return len(self.dataset)

    def inputs(self, rows: slice) -> np.ndarray:
        params = self.views.params(self.dataset.ids(rows))  # (R, V, P)
        images = np.repeat(np.asarray(self.dataset.inputs(rows)), self.views.count, axis=0)
        x = augment_images(images, params.reshape(-1, params.shape[-1]), spec=self.views.spec)
        return (x.reshape(len(x), -1) if self.flat else x).numpy()
