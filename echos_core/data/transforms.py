"""Training and validation transforms, and mixup/CutMix, all from timm.

The transforms for in-memory data take a uint8 image tensor ``(C, H, W)``; those for
ImageFolder take PIL images.  All return a normalised float tensor ``(C, size, size)``.

* small inputs (``image_size <= 64``): resize to the input size if needed, random crop
  with reflect padding (``augment.crop_padding``), horizontal flip, timm RandAugment
  (``augment.randaugment``), normalise, timm random erasing (``augment.random_erasing``,
  per-pixel noise).  Only RandAugment goes through PIL.
* larger inputs: ``timm.data.create_transform(is_training=True, ...)`` with
  ``auto_augment``, ``re_prob`` and ``hflip`` from the config and colour jitter off,
  so that the config names every augmentation that happens.
* validation: resize to ``image_size`` (no crop) and normalise.  ImageFolder data gets
  timm's evaluation transform instead (resize the short side, centre crop).

Randomness comes from the global ``random``, NumPy and torch generators (that is how
timm draws it); :func:`echos_core.data.make_loader` seeds them per epoch.

Posterize to 0 bits (timm's 'PosterizeIncreasing' at magnitude 10, which the common
'rand-m9-mstd0.5-inc1' reaches now and then) gives a black image, as timm intends;
current Pillow would raise instead and stop training mid-epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import SMALL_MAX, AugmentConfig

__all__ = ["SMALL_MAX", "resize_uint8", "reflect_index", "reflect_crop", "SmallTrainTransform", "ResizeNormalize",
           "train_transform", "val_transform", "imagefolder_transforms", "mixup_fn", "uses_mixup"]


def resize_uint8(imgs: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size), bilinear with antialiasing."""
    out = F.interpolate(imgs.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (C, H, W) -> uint8 (C, size, size); a no-op at the right size."""
    return img if img.shape[-2:] == (size, size) else resize_uint8(img[None], size)[0]


def reflect_index(n: int, pad: int, offsets: torch.Tensor) -> torch.Tensor:
    """Source positions of a length-``n`` window at ``offsets`` (shape (B,)) into the reflect-padded
    axis ``F.pad(..., (pad, pad), mode="reflect")``: shape (B, n), on ``offsets``' device."""
    i = (torch.arange(n, device=offsets.device) + offsets[:, None] - pad).abs()
    return torch.where(i >= n, 2 * (n - 1) - i, i).clamp_(0, n - 1)


def reflect_crop(img: torch.Tensor, pad: int, dy: int, dx: int) -> torch.Tensor:
    """``F.pad(img, (pad,) * 4, mode="reflect")[:, dy:dy+H, dx:dx+W]`` by indexing (much faster per image)."""
    h, w = img.shape[-2:]
    rows = reflect_index(h, pad, torch.tensor([dy]))[0]
    cols = reflect_index(w, pad, torch.tensor([dx]))[0]
    return img.index_select(-2, rows).index_select(-1, cols)


class ResizeNormalize:
    """Deterministic: resize to ``size`` x ``size`` and normalise.

    ``to_uint8`` is everything before the normalisation (uint8 out), for loaders that collate uint8
    batches and normalise them on the device (:class:`echos_core.data.loader.DeviceNormalise`);
    ``uint8_ok`` says whether nothing follows the normalisation here.
    """

    uint8_ok = True

    def __init__(self, size: int, mean: tuple, std: tuple):
        self.size = size
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def to_uint8(self, img: torch.Tensor) -> torch.Tensor:
        return _resize(img, self.size)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = self.to_uint8(img).float().div_(255.0)
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f"ResizeNormalize(size={self.size})"


class SmallTrainTransform(ResizeNormalize):
    """Small-image training pipeline on uint8 tensors (see the module docstring)."""

    def __init__(self, size: int, mean: tuple, std: tuple, aug: AugmentConfig):
        super().__init__(size, mean, std)
        self.hflip = aug.hflip
        self.pad = min(aug.crop_padding, size - 1)  # reflection needs padding < side
        self.randaugment = None
        if aug.randaugment:
            from timm.data.auto_augment import rand_augment_transform

            hparams = {"translate_const": int(size * 0.45), "img_mean": tuple(round(255 * m) for m in mean)}
            self.randaugment = _posterize_zero_ok(rand_augment_transform(aug.randaugment, hparams))
        self.erase = None
        if aug.random_erasing > 0:
            from timm.data.random_erasing import RandomErasing

            self.erase = RandomErasing(aug.random_erasing, mode="pixel", device="cpu")

    @property
    def uint8_ok(self) -> bool:
        return self.erase is None  # random erasing works on the normalised image, after to_uint8

    def to_uint8(self, img: torch.Tensor) -> torch.Tensor:
        img = _resize(img, self.size)
        if self.pad:
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            img = reflect_crop(img, self.pad, dy, dx)
        if self.hflip > 0 and torch.rand(()).item() < self.hflip:
            img = img.flip(-1)
        if self.randaugment is not None:
            from torchvision.transforms.functional import pil_to_tensor, to_pil_image

            img = pil_to_tensor(self.randaugment(to_pil_image(img)))
        return img

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = (self.to_uint8(img).float().div_(255.0) - self.mean) / self.std
        if self.erase is not None:
            x = self.erase(x)
        return x

    def __repr__(self) -> str:
        return (f"SmallTrainTransform(size={self.size}, crop_padding={self.pad}, hflip={self.hflip}, "
                f"randaugment={self.randaugment is not None}, random_erasing={self.erase is not None})")


def _posterize(img, bits_to_keep, **_):
    """timm's posterize, with 0 bits meaning a black image (as older Pillow did) instead of an error."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _posterize_zero_ok(tf):
    """Make every RandAugment inside ``tf`` survive posterize-to-0-bits.

    timm maps magnitude 10 of 'PosterizeIncreasing' (reached by 'rand-m9-mstd0.5-inc1'
    about 2% of the time) and magnitudes below 2.5 of 'Posterize' to 0 bits; current
    Pillow raises on 0 bits where older Pillow returned a black image.
    """
    from timm.data.auto_augment import RandAugment

    if isinstance(tf, RandAugment):
        for op in tf.ops:
            if op.name.startswith("Posterize"):
                op.aug_fn = _posterize
    for child in getattr(tf, "transforms", None) or ():
        _posterize_zero_ok(child)
    return tf


class _TensorToPIL:
    def __call__(self, img):
        from torchvision.transforms.functional import to_pil_image

        return to_pil_image(img) if isinstance(img, torch.Tensor) else img


def train_transform(size: int, mean: tuple, std: tuple, aug: AugmentConfig):
    """The training transform for inputs of side ``size`` (uint8 tensor or PIL in)."""
    if size <= SMALL_MAX:
        return SmallTrainTransform(size, mean, std, aug)
    from timm.data import create_transform
    from torchvision import transforms

    tf = _posterize_zero_ok(create_transform(
        input_size=size, is_training=True, hflip=aug.hflip, color_jitter=None,
        auto_augment=aug.randaugment, re_prob=aug.random_erasing, re_mode="pixel",
        interpolation="bicubic", mean=mean, std=std,
    ))
    return transforms.Compose([_TensorToPIL(), tf])


def val_transform(size: int, mean: tuple, std: tuple):
    """The validation transform for in-memory (uint8 tensor) data sets."""
    return ResizeNormalize(size, mean, std)


def uses_mixup(aug: AugmentConfig) -> bool:
    """Mixup or CutMix is on (batches then pair their images)."""
    return aug.mixup > 0 or aug.cutmix > 0


def mixup_fn(aug: AugmentConfig, label_smoothing: float, num_classes: int):
    """``timm.data.Mixup`` when mixup or CutMix is on, else None."""
    if not uses_mixup(aug):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, prob=aug.mix_prob,
                 label_smoothing=label_smoothing, num_classes=num_classes)


def imagefolder_transforms(size: int, mean: tuple, std: tuple, aug: AugmentConfig) -> tuple:
    """(train, val) transforms for PIL images of any size (ImageFolder)."""
    from timm.data import create_transform
    from torchvision import transforms

    val = create_transform(input_size=size, is_training=False, interpolation="bicubic", mean=mean, std=std)
    if size <= SMALL_MAX:
        # resize the short side and centre-crop to the input size, then the small pipeline
        head = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()])
        return transforms.Compose([head, SmallTrainTransform(size, mean, std, aug)]), val
    return train_transform(size, mean, std, aug), val
