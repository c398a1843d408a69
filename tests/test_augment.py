import numpy as np
import torch

from softtargets.recipes.hinton2015.augment import random_shift


def reference_shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(img)
    h, w = img.shape
    for y in range(h):
        for x in range(w):
            sy, sx = y + dy, x + dx
            if 0 <= sy < h and 0 <= sx < w:
                out[y, x] = img[sy, sx]
    return out


def test_random_shift_matches_a_pixel_loop_reference():
    imgs = torch.arange(4 * 6 * 5, dtype=torch.uint8).reshape(4, 6, 5)
    g = torch.Generator().manual_seed(3)
    out = random_shift(imgs, max_shift=2, generator=g)
    g = torch.Generator().manual_seed(3)
    oy = torch.randint(0, 5, (4,), generator=g) - 2
    ox = torch.randint(0, 5, (4,), generator=g) - 2
    for i in range(4):
        ref = reference_shift(imgs[i].numpy(), int(oy[i]), int(ox[i]))
        np.testing.assert_array_equal(out[i].numpy(), ref)


def test_zero_shift_is_identity_and_seed_is_deterministic():
    imgs = torch.randint(0, 255, (8, 28, 28), dtype=torch.uint8)
    assert random_shift(imgs, max_shift=0, generator=torch.Generator()) is imgs
    a = random_shift(imgs, max_shift=2, generator=torch.Generator().manual_seed(0))
    b = random_shift(imgs, max_shift=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
