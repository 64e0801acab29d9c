"""The frozen-evaluation transforms (docs/reference.md §6.2, §6.3) on uint8 arrays, in numpy, OpenCV and PIL.

Video: the official `VideoTransform(training=True)` (RandAugment 'rand-m7-n4-mstd0.5-inc1' with one set of op
parameters for the whole clip, random resized crop (0.08, 1), no flip, cube random erasing) and the two test
transforms (`EvalVideoTransform`: short side to res, 3 crops along the long side; the 1-view short side
int(res 256/224) + centre crop). Images: timm's `create_transform(is_training=True, auto_augment='original',
interpolation='bicubic', re_prob=0.25, re_mode='pixel', re_count=1)` and the torchvision val transform.

Everything returns uint8: normalisation by the ImageNet mean/std happens on the device (docs/reference.md §10, row
8), which is linear, so crops and resizes commute with it up to uint8 rounding. Randomness comes only from the numpy
Generator passed in (grain's per-element generator); the official code draws from Python's `random` and numpy's
global state, so the distributions match but not the streams.

Random erasing and uint8. The official erasing runs *after* normalisation and fills the box with N(0, 1) noise in
normalised units (mode 'pixel'). We draw that same noise z, map it to pixels, 255 (mean_c + std_c z), round and
clip to [0, 255]. After the device normalises, the erased values equal the official ones up to uint8 rounding
(+-0.5 level = +-0.009 normalised) except in the tails that the clip cuts (|z| > ~2.1, about 3% of the erased
pixels, which end at the range limit instead). The alternative, shipping a mask so the device draws the noise,
would be exact but needs an extra array and device randomness in the step; the host-side version keeps the batch
format unchanged and is the one used here.
"""
import math
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from input_pipeline.transforms import flip_in_place, random_resized_crop_box, resize_bilinear, to_uint8

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_LEVEL_MAX = 10.0
_BICUBIC = Image.Resampling.BICUBIC
_BILINEAR = Image.Resampling.BILINEAR


# ------------------------------------------------------------------------------------------------ augment ops
# timm's op set (the official video RandAugment is a copy of timm's auto_augment.py). Each op is
# (apply(img, arg, fill, resample), level_to_arg(level, negate) or None). `negate` is drawn once per op call.

def _affine(coeffs):
  return lambda img, arg, fill, resample: img.transform(
      img.size, Image.AFFINE, coeffs(img, arg), resample=resample, fillcolor=fill)


def _signed(scale):
  return lambda level, negate: (-1.0 if negate else 1.0) * level / _LEVEL_MAX * scale


def _enhance(cls):
  return lambda img, factor, fill, resample: cls(img).enhance(factor)


def _solarize_add(img, add, fill, resample):
  lut = [min(255, i + add) if i < 128 else i for i in range(256)]
  return img.point(lut * len(img.getbands()))


def _posterize(img, bits, fill, resample):
  # ImageOps.posterize's lut (i & ~(2**(8 - bits) - 1)), written out because Pillow >= 12 rejects bits = 0, which
  # PosterizeIncreasing reaches at level 10 (older Pillow, as timm's users ran it, returns a black image).
  if bits >= 8:
    return img
  mask = ~(2 ** (8 - max(0, bits)) - 1) & 0xFF
  return img.point([i & mask for i in range(256)] * len(img.getbands()))


_enhance_level = lambda level, negate: level / _LEVEL_MAX * 1.8 + 0.1
# The 'no change' level is 1.0; increasing variants move away from it with the magnitude (range [0.1, 1.9]).
_enhance_increasing_level = lambda level, negate: 1.0 + _signed(0.9)(level, negate)

_OPS = {
    'AutoContrast': (lambda img, arg, fill, resample: ImageOps.autocontrast(img), None),
    'Equalize': (lambda img, arg, fill, resample: ImageOps.equalize(img), None),
    'Invert': (lambda img, arg, fill, resample: ImageOps.invert(img), None),
    'Rotate': (lambda img, deg, fill, resample: img.rotate(deg, resample=resample, fillcolor=fill), _signed(30.0)),
    'Posterize': (_posterize, lambda level, negate: int(level / _LEVEL_MAX * 4)),
    'PosterizeIncreasing': (_posterize, lambda level, negate: 4 - int(level / _LEVEL_MAX * 4)),
    'PosterizeOriginal': (_posterize, lambda level, negate: int(level / _LEVEL_MAX * 4) + 4),
    'Solarize': (lambda img, t, fill, resample: ImageOps.solarize(img, t),
                 lambda level, negate: int(level / _LEVEL_MAX * 256)),
    'SolarizeIncreasing': (lambda img, t, fill, resample: ImageOps.solarize(img, t),
                           lambda level, negate: 256 - int(level / _LEVEL_MAX * 256)),
    'SolarizeAdd': (_solarize_add, lambda level, negate: int(level / _LEVEL_MAX * 110)),
    'Color': (_enhance(ImageEnhance.Color), _enhance_level),
    'ColorIncreasing': (_enhance(ImageEnhance.Color), _enhance_increasing_level),
    'Contrast': (_enhance(ImageEnhance.Contrast), _enhance_level),
    'ContrastIncreasing': (_enhance(ImageEnhance.Contrast), _enhance_increasing_level),
    'Brightness': (_enhance(ImageEnhance.Brightness), _enhance_level),
    'BrightnessIncreasing': (_enhance(ImageEnhance.Brightness), _enhance_increasing_level),
    'Sharpness': (_enhance(ImageEnhance.Sharpness), _enhance_level),
    'SharpnessIncreasing': (_enhance(ImageEnhance.Sharpness), _enhance_increasing_level),
    'ShearX': (_affine(lambda img, f: (1, f, 0, 0, 1, 0)), _signed(0.3)),
    'ShearY': (_affine(lambda img, f: (1, 0, 0, f, 1, 0)), _signed(0.3)),
    'TranslateXRel': (_affine(lambda img, pct: (1, 0, pct * img.size[0], 0, 1, 0)), _signed(0.45)),
    'TranslateYRel': (_affine(lambda img, pct: (1, 0, 0, 0, 1, pct * img.size[1])), _signed(0.45)),
}

# timm _RAND_INCREASING_TRANSFORMS (selected by 'inc1'); _RAND_TRANSFORMS without it.
RAND_INCREASING_OPS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing', 'SolarizeIncreasing', 'SolarizeAdd',
    'ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY',
    'TranslateXRel', 'TranslateYRel')
RAND_OPS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd', 'Color', 'Contrast',
    'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')

# AutoAugment ImageNet policy of the paper (timm 'original'): 25 sub-policies of (op, probability, magnitude).
AUTO_AUGMENT_ORIGINAL = (
    (('PosterizeOriginal', 0.4, 8), ('Rotate', 0.6, 9)),
    (('Solarize', 0.6, 5), ('AutoContrast', 0.6, 5)),
    (('Equalize', 0.8, 8), ('Equalize', 0.6, 3)),
    (('PosterizeOriginal', 0.6, 7), ('PosterizeOriginal', 0.6, 6)),
    (('Equalize', 0.4, 7), ('Solarize', 0.2, 4)),
    (('Equalize', 0.4, 4), ('Rotate', 0.8, 8)),
    (('Solarize', 0.6, 3), ('Equalize', 0.6, 7)),
    (('PosterizeOriginal', 0.8, 5), ('Equalize', 1.0, 2)),
    (('Rotate', 0.2, 3), ('Solarize', 0.6, 8)),
    (('Equalize', 0.6, 8), ('PosterizeOriginal', 0.4, 6)),
    (('Rotate', 0.8, 8), ('Color', 0.4, 0)),
    (('Rotate', 0.4, 9), ('Equalize', 0.6, 2)),
    (('Equalize', 0.0, 7), ('Equalize', 0.8, 8)),
    (('Invert', 0.6, 4), ('Equalize', 1.0, 8)),
    (('Color', 0.6, 4), ('Contrast', 1.0, 8)),
    (('Rotate', 0.8, 8), ('Color', 1.0, 2)),
    (('Color', 0.8, 8), ('Solarize', 0.8, 7)),
    (('Sharpness', 0.4, 7), ('Invert', 0.6, 8)),
    (('ShearX', 0.6, 5), ('Equalize', 1.0, 9)),
    (('Color', 0.4, 0), ('Equalize', 0.6, 3)),
    (('Equalize', 0.4, 7), ('Solarize', 0.2, 4)),
    (('Solarize', 0.6, 5), ('AutoContrast', 0.6, 5)),
    (('Invert', 0.6, 4), ('Equalize', 1.0, 8)),
    (('Color', 0.6, 4), ('Contrast', 1.0, 8)),
    (('Equalize', 0.8, 8), ('Equalize', 0.6, 3)),
)


def _sample_op(name, prob, magnitude, magnitude_std, rng):
  """One AugmentOp call's random choices: (name, arg) or None when the op is skipped (timm AugmentOp.__call__)."""
  if prob < 1.0 and rng.random() > prob:
    return None
  if magnitude_std > 0:
    magnitude = rng.normal(magnitude, magnitude_std)
  magnitude = min(_LEVEL_MAX, max(0.0, magnitude))
  level_fn = _OPS[name][1]
  negate = bool(rng.random() > 0.5)
  return name, (None if level_fn is None else level_fn(magnitude, negate))


def apply_ops(frames, ops, *, fill, resample=_BICUBIC):
  """Applies sampled ops to uint8 [..., H, W, 3] frames; every frame gets exactly the same op arguments."""
  ops = [op for op in ops if op is not None]
  if not ops:
    return frames
  flat = frames.reshape((-1,) + frames.shape[-3:])
  out = np.empty_like(flat)
  for i, frame in enumerate(flat):
    img = Image.fromarray(frame)
    for name, arg in ops:
      img = _OPS[name][0](img, arg, fill, resample)
    out[i] = np.asarray(img)
  return out.reshape(frames.shape)


class RandAugment:
  """timm-style RandAugment from a config string such as 'rand-m7-n4-mstd0.5-inc1'.

  Official video version (src/datasets/utils/video/randaugment.py, docs/reference.md §5.4 / §6.2): n ops drawn
  uniformly with replacement; each applies with p 0.5, magnitude ~ N(m, mstd) clipped to [0, 10], a random sign
  where the op has one. The draw happens once per clip and is applied to every frame. Fill grey (128, 128, 128): the
  official create_random_augment passes no img_mean; resampling bicubic.
  """

  def __init__(self, config_str='rand-m7-n4-mstd0.5-inc1', *, fill=(128, 128, 128), resample=_BICUBIC):
    parts = config_str.split('-')
    if parts[0] != 'rand':
      raise ValueError(f'RandAugment config must start with "rand": {config_str!r}')
    self.magnitude, self.num_layers, self.magnitude_std, increasing = _LEVEL_MAX, 2, 0.0, False
    for part in parts[1:]:
      key, val = re.split(r'(\d.*)', part)[:2]
      if key == 'm':
        self.magnitude = float(int(val))
      elif key == 'n':
        self.num_layers = int(val)
      elif key == 'mstd':
        self.magnitude_std = float(val)
      elif key == 'inc':
        increasing = bool(int(val))
      else:
        raise ValueError(f'unsupported RandAugment section {part!r} in {config_str!r}')
    self.ops = RAND_INCREASING_OPS if increasing else RAND_OPS
    self.fill, self.resample = tuple(fill), resample

  def sample(self, rng):
    names = rng.choice(len(self.ops), self.num_layers, replace=True)
    return [_sample_op(self.ops[i], 0.5, self.magnitude, self.magnitude_std, rng) for i in names]

  def __call__(self, frames, rng):
    return apply_ops(frames, self.sample(rng), fill=self.fill, resample=self.resample)


class AutoAugment:
  """timm AutoAugment 'original' for images: one sub-policy chosen uniformly, its two ops with their own p."""

  def __init__(self, policy=AUTO_AUGMENT_ORIGINAL, *, fill=None, resample=_BICUBIC):
    self.policy = policy
    # timm create_transform passes img_mean = round(255 * mean) as the fill: (124, 116, 104).
    self.fill = tuple(fill) if fill else tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN)
    self.resample = resample

  def sample(self, rng):
    sub = self.policy[int(rng.integers(len(self.policy)))]
    return [_sample_op(name, prob, magnitude, 0.0, rng) for name, prob, magnitude in sub]

  def __call__(self, image, rng):
    return apply_ops(image, self.sample(rng), fill=self.fill, resample=self.resample)


# ------------------------------------------------------------------------------------------------ erasing

def random_erasing_box(height, width, rng, *, probability=0.25, min_area=0.02, max_area=1 / 3, min_aspect=0.3,
                       num_tries=10):
  """(top, left, h, w) or None: timm RandomErasing with count 1 (the video 'cube' variant tries 100 times).

  Note h = sqrt(area * aspect) here, the opposite convention of the crop; both sides must be strictly smaller
  than the image, or the try is rejected.
  """
  if rng.random() > probability:
    return None
  log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
  for _ in range(num_tries):
    target_area = rng.uniform(min_area, max_area) * height * width
    aspect = math.exp(rng.uniform(*log_aspect))
    h = int(round(math.sqrt(target_area * aspect)))
    w = int(round(math.sqrt(target_area / aspect)))
    if w < width and h < height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  return None


def erase_with_noise(frames, box, rng, mean=IMAGENET_MEAN, std=IMAGENET_STD):
  """Fills box in every frame of uint8 [..., H, W, 3] with fresh per-pixel N(0, 1) noise of normalised space.

  The official 'pixel' mode writes the noise after normalisation; see the module docstring for the uint8 mapping.
  Each frame gets its own noise (the official cube erase calls normal_() per frame), the box is shared.
  """
  if box is None:
    return frames
  top, left, h, w = box
  frames = np.array(frames, copy=True)
  z = rng.standard_normal(frames.shape[:-3] + (h, w, 3), dtype=np.float32)
  pixels = 255.0 * (np.asarray(mean, np.float32) + np.asarray(std, np.float32) * z)
  frames[..., top:top + h, left:left + w, :] = to_uint8(pixels)
  return frames


# ------------------------------------------------------------------------------------------------ video

def resize_short_side(clip, size):
  """uint8 [T, H, W, 3] -> short side `size`, long side int(size * long / short): the official resize_clip.

  The official eval resizes decord's uint8 frames one by one with cv2.resize(img, (new_w, new_h),
  interpolation=cv2.INTER_LINEAR); resize_bilinear makes that same call, so the result is bit-exact (tested). A clip
  whose short side already equals size is returned as is, as the official.
  """
  _, h, w, _ = clip.shape
  if min(h, w) == size:
    return clip
  if w < h:
    new_h, new_w = int(size * h / w), size
  else:
    new_h, new_w = size, int(size * w / h)
  return resize_bilinear(clip, new_h, new_w)


def video_train_transform(clip, rng, *, crop_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), reprob=0.25,
                          auto_augment=True, horizontal_flip=False, randaugment=None):
  """uint8 [T, H, W, 3] -> uint8 [T, crop, crop, 3]: official VideoTransform(training=True) of the eval.

  Order as the official: RandAugment on the full frames, (normalise: device), random resized crop (one box,
  bilinear), no flip in the eval configs, cube random erasing (one box, p = reprob).
  """
  if auto_augment:
    clip = (randaugment or RandAugment())(clip, rng)
  _, height, width, _ = clip.shape
  top, left, h, w = random_resized_crop_box(height, width, tuple(scale), tuple(ratio), rng)
  out = resize_bilinear(clip[:, top:top + h, left:left + w], crop_size, crop_size)
  if horizontal_flip and rng.uniform() < 0.5:
    flip_in_place(out)
  if reprob > 0:
    out = erase_with_noise(out, random_erasing_box(crop_size, crop_size, rng, probability=reprob, num_tries=100),
                           rng)
  return out


def video_eval_views(clip, *, crop_size, num_views=3):
  """uint8 [T, H, W, 3] -> uint8 [V, T, crop, crop, 3]: official EvalVideoTransform (docs/reference.md §6.2).

  Short side to crop_size (not 256/224), then num_views crops along the long side starting at i * step with
  step = (long - crop) // (num_views - 1); a square frame gives num_views identical crops, as the official.
  """
  if num_views == 1:
    return video_eval_center(clip, crop_size=crop_size)
  clip = resize_short_side(clip, crop_size)
  _, h, w, _ = clip.shape
  step = (max(h, w) - crop_size) // (num_views - 1)
  views = []
  for i in range(num_views):
    start = i * step
    views.append(clip[:, start:start + crop_size] if h > w else clip[:, :, start:start + crop_size])
  return np.stack(views)


def video_eval_center(clip, *, crop_size):
  """uint8 [T, H, W, 3] -> uint8 [1, T, crop, crop, 3]: the 1-view test transform, short side int(crop 256/224)."""
  clip = resize_short_side(clip, int(crop_size * 256 / 224))
  _, h, w, _ = clip.shape
  # Official CenterCrop: int(round((im - size) / 2)) with Python's round (half to even).
  top, left = int(round((h - crop_size) / 2.0)), int(round((w - crop_size) / 2.0))
  return clip[None, :, top:top + crop_size, left:left + crop_size]


class VideoEvalTransform:
  """transform(clips uint8 [S, T, H, W, 3], rng) -> uint8 [S, V, T, crop, crop, 3] for the eval pipeline.

  Segments are transformed independently (the official dataset calls the transform per clip); V = 1 when
  training or for the 1-view test, num_views otherwise. A class, not a closure, so grain workers can pickle it.
  """

  def __init__(self, *, crop_size, training, num_views=1, reprob=0.25, auto_augment=True,
               scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), horizontal_flip=False):
    self.crop_size, self.training, self.num_views = int(crop_size), bool(training), int(num_views)
    self.kwargs = dict(scale=tuple(scale), ratio=tuple(ratio), reprob=float(reprob),
                       auto_augment=bool(auto_augment), horizontal_flip=bool(horizontal_flip))
    self.randaugment = RandAugment()

  def __call__(self, clips, rng):
    if self.training:
      views = [video_train_transform(c, rng, crop_size=self.crop_size, randaugment=self.randaugment,
                                     **self.kwargs)[None] for c in clips]
    elif self.num_views > 1:
      views = [video_eval_views(c, crop_size=self.crop_size, num_views=self.num_views) for c in clips]
    else:
      views = [video_eval_center(c, crop_size=self.crop_size) for c in clips]
    return np.stack(views)


# ------------------------------------------------------------------------------------------------ images

def _as_rgb_image(image):
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f'expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}')
  return Image.fromarray(image)


def image_train_transform(image, rng, *, crop_size, reprob=0.25, auto_augment=None):
  """uint8 [H, W, 3] -> uint8 [crop, crop, 3]: timm create_transform(is_training=True) as the official IN1K eval.

  RandomResizedCropAndInterpolation (0.08-1, 3/4-4/3, bicubic: a PIL resize, antialiased), horizontal flip p 0.5,
  AutoAugment 'original' (colour jitter is off whenever AutoAugment is on), (normalise: device), random erasing
  p = reprob, 'pixel' mode, one box, 10 tries.
  """
  img = _as_rgb_image(image)
  top, left, h, w = random_resized_crop_box(img.height, img.width, (0.08, 1.0), (3 / 4, 4 / 3), rng)
  img = img.crop((left, top, left + w, top + h)).resize((crop_size, crop_size), _BICUBIC)
  if rng.random() < 0.5:
    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  out = (auto_augment or AutoAugment())(np.asarray(img), rng)
  if reprob > 0:
    out = erase_with_noise(out, random_erasing_box(crop_size, crop_size, rng, probability=reprob), rng)
  return np.ascontiguousarray(out)


def image_eval_transform(image, *, crop_size):
  """uint8 [H, W, 3] -> uint8 [crop, crop, 3]: Resize(int(crop 256/224)) (torchvision default: PIL bilinear,
  antialiased), CenterCrop(crop) with torchvision's int(round((size - crop) / 2))."""
  img = _as_rgb_image(image)
  size = int(crop_size * 256 / 224)
  w, h = img.size
  # torchvision Resize(int): the short side becomes size, the long one int(size * long / short).
  new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
  if (new_w, new_h) != (w, h):
    img = img.resize((new_w, new_h), _BILINEAR)
  top, left = int(round((new_h - crop_size) / 2.0)), int(round((new_w - crop_size) / 2.0))
  return np.asarray(img.crop((left, top, left + crop_size, top + crop_size)))
