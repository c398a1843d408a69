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
from softtargets.augment.mix import (Mix, check_pool, dataset_fetch, draw_mix, mixed_images)
from softtargets.augment.mix import param_names as mix_param_names
from softtargets.errors import ConfigError

KEYS = ("count", "augment", "seed", "clean_view0", "mix")


@dataclasses.dataclass(frozen=True)
class Views:
    """V augmented views per sample: `count` V, `augment` an AugmentSpec or its text form
    ('shift=2,rotate=10,flip=1', or a JSON file), `seed` of the per-(sample, view) parameters,
    `clean_view0` (None: the spec's; True: view 0 is the unaugmented input, False: augmented
    like the others), `mix` a Mix for stored mixed views (augment/mix.py). Normalised when
    made: `augment` is an AugmentSpec holding clean_view0. Mixed views draw partners among a
    dataset's sample ids: write_logits binds them (`for_dataset`)."""

    count: int
    augment: AugmentSpec | str = AugmentSpec()
    seed: int = 0
    clean_view0: bool | None = None
    mix: Mix | None = None

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
        if self.mix is not None and not isinstance(self.mix, Mix):
            raise ConfigError(f"Views mix must be softtargets.Mix(kind=..., alpha=..., prob=...) "
                              f"or None, got {type(self.mix).__name__}")
        object.__setattr__(self, "_pool", None)

    def for_dataset(self, dataset: Any) -> Views:
        """These views with mixed views' partners drawn among `dataset`'s sample ids (a copy;
        the same Views without mix)."""
        if self.mix is None:
            return self
        bound = dataclasses.replace(self)
        object.__setattr__(bound, "_pool", check_pool(dataset.sample_ids))
        return bound

    @property
    def spec(self) -> AugmentSpec:
        """The augmentation spec (normalised `augment`)."""
        return self.augment  # type: ignore[return-value]

    def to_json(self) -> dict[str, Any]:
        out = {"count": self.count, "augment": self.spec.to_json(), "seed": self.seed,
               "clean_view0": self.clean_view0}
        return out if self.mix is None else {**out, "mix": self.mix.to_json()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Views:
        unknown = sorted(set(d) - set(KEYS)) if isinstance(d, dict) else ["(not an object)"]
        if unknown:
            raise ConfigError(f"views options have unknown keys {unknown}; allowed: "
                              f"{list(KEYS)}")
        augment = d.get("augment", {})
        return cls(count=d.get("count", 0), seed=d.get("seed", 0),
                   augment=AugmentSpec.from_json(augment) if isinstance(augment, dict)
                   else augment, clean_view0=d.get("clean_view0"),
                   mix=None if d.get("mix") is None else Mix.from_json(d["mix"]))

    @classmethod
    def of_info(cls, info: dict[str, Any]) -> Views:
        """The Views a store's `views` attribute records (docs/FORMAT.md "Augmented views")."""
        mix = info.get("mix")
        return cls(count=int(info["views"]), augment=AugmentSpec.from_json(info["augment"]),
                   seed=int(info["seed"]), mix=None if mix is None else Mix.from_json(mix))

    def info(self) -> dict[str, Any]:
        """The store attribute `views`."""
        if self.mix is None:
            return views_info(self.spec, views=self.count, seed=self.seed)
        return views_info(self.spec, views=self.count, seed=self.seed, mix=self.mix.to_json(),
                          param_names=self.param_names)

    def check_bound(self) -> None:
        """Refuse mixed views whose partner pool is not bound (for_dataset) in one line."""
        if self.mix is not None and getattr(self, "_pool", None) is None:
            raise ConfigError("Views(mix=...) draws partners among the dataset's sample ids: "
                              "pass it to write_logits, or bind them with "
                              "views.for_dataset(dataset) before LogitWriter(views=)")

    @property
    def param_names(self) -> tuple[str, ...]:
        """The columns of view_params: the augmentations', then the mix's."""
        own = self.spec.param_names
        return own if self.mix is None else own + mix_param_names(self.spec)

    @property
    def num_params(self) -> int:
        """P, the columns of view_params."""
        return len(self.param_names)

    def params(self, sample_ids: np.ndarray) -> np.ndarray:
        """(R, V, P) float32 parameters of every view of `sample_ids` (R,)."""
        ids = np.asarray(sample_ids)
        own = draw_params(self.spec, seed=self.seed, sample_ids=ids, views=self.count)
        if self.mix is None:
            return own
        self.check_bound()
        mixed = draw_mix(self.mix, self.spec, seed=self.seed, sample_ids=ids,
                         views=self.count, pool=getattr(self, "_pool"))
        return np.concatenate([own, mixed], axis=-1)  # (R, V, P)


class ViewInputs:
    """A dataset's V views per row as teacher inputs: `inputs(rows)` is (R*V, *item) float32,
    row r's views consecutive (`flat`: (R*V, D), as the command line's IDX teachers take
    them). Anything with `inputs(rows)` and `ids(rows)` (a softtargets dataset) works."""

    def __init__(self, dataset: Any, views: Views, *, flat: bool = False) -> None:
        self.dataset, self.views, self.flat = dataset, views.for_dataset(dataset), flat
        self.fetch = dataset_fetch(dataset) if views.mix is not None else None

    def __len__(self) -> int:
        return len(self.dataset)

    def inputs(self, rows: slice) -> np.ndarray:
        params = self.views.params(self.dataset.ids(rows))  # (R, V, P)
        images = np.repeat(np.asarray(self.dataset.inputs(rows)), self.views.count, axis=0)
        flat = params.reshape(-1, params.shape[-1])  # (R*V, P)
        if self.fetch is None:
            x = augment_images(images, flat, spec=self.views.spec)
        else:  # the teacher sees the mixed input
            x = mixed_images(images, flat, spec=self.views.spec, mix=self.views.mix,
                             fetch=self.fetch)[0]
        return (x.reshape(len(x), -1) if self.flat else x).numpy()
