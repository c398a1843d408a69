"""A user augmentation for the tests (imported by name: 'user_augs:dim')."""

from softtargets.augment.views import Augmentation

# scales the image by a drawn factor in [0.5, 1]: one plain number per view
dim = Augmentation(param_names=("factor",), draw=lambda rng: (rng.uniform(0.5, 1.0),),
                   apply=lambda x, p: x * p[:, :1, None])  # x (B, H, W), p (B, 1)
not_an_augmentation = 3
