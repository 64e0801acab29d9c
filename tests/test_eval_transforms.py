"""The frozen-eval transforms: RandAugment / AutoAugment semantics, crops, views, erasing in uint8."""
import cv2
import numpy as np
import pytest
import torch

from input_pipeline import eval_transforms as et


def _clip(t=4, h=48, w=64, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


def test_randaugment_config_string_is_parsed_like_timm():
  ra = et.RandAugment('rand-m7-n4-mstd0.5-inc1')
  assert (ra.magnitude, ra.num_layers, ra.magnitude_std) == (7.0, 4, 0.5)
  assert ra.ops == et.RAND_INCREASING_OPS and len(ra.ops) == 15
  assert et.RandAugment('rand-m9-n2').ops == et.RAND_OPS
  with pytest.raises(ValueError):
    et.RandAugment('rand-x3')


def test_magnitude_to_argument_rules_follow_timm():
  # level 7 (the eval's m7): fixed numbers that a wrong mapping would change.
  arg = lambda name, negate=False: et._OPS[name][1](7.0, negate)
  assert arg('SolarizeIncreasing') == 256 - 179
  assert arg('PosterizeIncreasing') == 4 - 2
  assert arg('SolarizeAdd') == 77
  assert arg('Rotate') == pytest.approx(21.0) and arg('Rotate', True) == pytest.approx(-21.0)
  assert arg('ShearX') == pytest.approx(0.21)
  assert arg('TranslateXRel', True) == pytest.approx(-0.315)
  assert arg('ContrastIncreasing') == pytest.approx(1.63) and arg('ContrastIncreasing', True) == pytest.approx(0.37)
  assert arg('Color') == pytest.approx(1.36)
  assert et._OPS['PosterizeOriginal'][1](8.0, False) == 7


def test_randaugment_magnitude_is_gaussian_around_m_and_clipped():
  rng = np.random.default_rng(0)
  levels = []
  for _ in range(4000):
    op = et._sample_op('ShearX', 1.0, 7.0, 0.5, rng)
    levels.append(abs(op[1]) / 0.3 * 10)
  levels = np.array(levels)
  assert levels.mean() == pytest.approx(7.0, abs=0.05) and levels.std() == pytest.approx(0.5, abs=0.03)
  assert et._sample_op('ShearX', 1.0, 10.0, 5.0, rng)[1] <= 0.3 + 1e-12  # clipped at level 10
  applied = sum(et._sample_op('Invert', 0.5, 7.0, 0.5, rng) is not None for _ in range(4000))
  assert applied / 4000 == pytest.approx(0.5, abs=0.03)


def test_randaugment_applies_the_same_parameters_to_every_frame():
  ra = et.RandAugment()
  frame = _clip(t=1, seed=1)[0]
  clip = np.stack([frame] * 5)
  changed = 0
  for seed in range(20):
    out = ra(clip, np.random.default_rng(seed))
    assert out.shape == clip.shape and out.dtype == np.uint8
    assert all(np.array_equal(out[0], out[i]) for i in range(1, 5))
    changed += not np.array_equal(out, clip)
  assert changed >= 15  # 4 ops at p 0.5: all skipped only 1/16 of the time
  # Different frames: each equals the same sampled ops applied to that frame alone.
  clip = _clip(t=3, seed=2)
  ops = ra.sample(np.random.default_rng(5))
  out = et.apply_ops(clip, ops, fill=ra.fill)
  for i in range(3):
    np.testing.assert_array_equal(out[i], et.apply_ops(clip[i], ops, fill=ra.fill))


def test_autoaugment_original_policy_is_the_imagenet_one():
  assert len(et.AUTO_AUGMENT_ORIGINAL) == 25
  assert all(name in et._OPS for sub in et.AUTO_AUGMENT_ORIGINAL for name, _, _ in sub)
  assert et.AutoAugment().fill == (124, 116, 104)  # timm: round(255 * ImageNet mean)


def test_video_train_transform_crops_one_box_for_all_frames_without_flip():
  frame = _clip(t=1, h=60, w=80, seed=3)[0]
  clip = np.stack([frame] * 4)
  for seed in range(10):
    out = et.video_train_transform(clip, np.random.default_rng(seed), crop_size=32, reprob=0.0)
    assert out.shape == (4, 32, 32, 3) and out.dtype == np.uint8
    assert all(np.array_equal(out[0], out[i]) for i in range(4))


def test_video_train_transform_matches_the_crop_when_augment_and_erase_are_off():
  clip = _clip(t=2, h=60, w=80, seed=4)
  out = et.video_train_transform(clip, np.random.default_rng(7), crop_size=32, reprob=0.0, auto_augment=False)
  top, left, h, w = et.random_resized_crop_box(60, 80, (0.08, 1.0), (3 / 4, 4 / 3), np.random.default_rng(7))
  x = torch.from_numpy(clip[:, top:top + h, left:left + w].astype(np.float32)).permute(0, 3, 1, 2)
  ref = torch.nn.functional.interpolate(x, size=(32, 32), mode='bilinear', align_corners=False)
  ref = np.clip(np.rint(ref.permute(0, 2, 3, 1).numpy()), 0, 255)
  assert np.abs(out.astype(np.int32) - ref).max() <= 1


def test_cube_erasing_shares_the_box_and_fills_normalised_noise():
  rng = np.random.default_rng(0)
  clip = np.full((3, 64, 64, 3), 7, np.uint8)
  out = et.video_train_transform(clip, rng, crop_size=64, reprob=1.0, auto_augment=False)
  erased = out != 7
  assert erased.any()
  assert all(np.array_equal(erased[0].any(-1), erased[i].any(-1)) for i in range(3))  # same box
  assert not np.array_equal(out[0], out[1])  # fresh noise per frame
  ys, xs = np.nonzero(erased[0].any(-1))
  box = out[:, ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32) / 255.0
  z = (box - np.array(et.IMAGENET_MEAN)) / np.array(et.IMAGENET_STD)
  # N(0, 1) in normalised space, up to the uint8 clip of the tails.
  assert abs(z.mean()) < 0.05 and 0.9 < z.std() < 1.0


def test_erasing_box_follows_timm_area_and_aspect_ranges():
  rng = np.random.default_rng(1)
  boxes = [et.random_erasing_box(100, 100, rng, probability=1.0) for _ in range(2000)]
  areas = np.array([h * w for _, _, h, w in boxes]) / 1e4
  assert 0.015 < areas.min() and areas.max() < 0.35
  assert sum(et.random_erasing_box(10, 10, rng) is not None for _ in range(4000)) / 4000 == pytest.approx(
      0.25, abs=0.03)


def test_three_views_are_evenly_spaced_along_the_long_side():
  t, h, w, res = 2, 32, 50, 32
  clip = _clip(t=t, h=h, w=w, seed=5)  # short side already res: no resize
  views = et.video_eval_views(clip, crop_size=res, num_views=3)
  assert views.shape == (3, t, res, res, 3)
  step = (w - res) // 2
  for i in range(3):
    np.testing.assert_array_equal(views[i], clip[:, :, i * step:i * step + res])
  portrait = np.swapaxes(clip, 1, 2)
  views = et.video_eval_views(portrait, crop_size=res, num_views=3)
  np.testing.assert_array_equal(views[2], portrait[:, 2 * step:2 * step + res])


def _official_resize_clip(clip, size):
  """The official functional.resize_clip on decord's numpy frames: get_resize_sizes, then cv2.resize per frame."""
  h, w = clip.shape[1:3]
  if (w <= h and w == size) or (h <= w and h == size):
    return clip
  new_h, new_w = (int(size * h / w), size) if w < h else (size, int(size * w / h))
  return np.stack([cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR) for img in clip])


@pytest.mark.parametrize('hw,size', [((48, 80), 32), ((80, 48), 32), ((272, 640), 224), ((144, 176), 256),
                                     ((37, 51), 224), ((720, 1280), 256), ((101, 101), 60)])
def test_short_side_resize_is_bit_exact_with_the_official_opencv_call(hw, size):
  clip = _clip(t=3, h=hw[0], w=hw[1], seed=sum(hw))
  ours = et.resize_short_side(clip, size)
  want = _official_resize_clip(clip, size)
  assert ours.dtype == np.uint8 and ours.shape == want.shape and min(ours.shape[1:3]) == size
  np.testing.assert_array_equal(ours, want)
  # And it is the bilinear resize of the pretraining transform: torch's within one level.
  ref = torch.nn.functional.interpolate(torch.from_numpy(clip.astype(np.float32)).permute(0, 3, 1, 2),
                                        size=ours.shape[1:3], mode='bilinear', align_corners=False)
  ref = np.clip(np.rint(ref.permute(0, 2, 3, 1).numpy()), 0, 255)
  assert np.abs(ours.astype(np.float32) - ref).max() <= 1


def test_eval_views_resize_the_short_side_to_the_resolution():
  clip = _clip(t=2, h=48, w=80, seed=6)
  views = et.video_eval_views(clip, crop_size=32, num_views=3)
  resized = _official_resize_clip(clip, 32)
  assert resized.shape == (2, 32, int(32 * 80 / 48), 3)
  step = (resized.shape[2] - 32) // 2
  for i in range(3):
    np.testing.assert_array_equal(views[i], resized[:, :, i * step:i * step + 32])


def test_one_view_uses_256_over_224_and_a_centre_crop():
  clip = _clip(t=2, h=60, w=90, seed=7)
  out = et.video_eval_center(clip, crop_size=42)  # short side int(42 * 256 / 224) = 48
  resized = _official_resize_clip(clip, 48)
  assert resized.shape[1:3] == (48, 72)
  np.testing.assert_array_equal(out[0], resized[:, 3:45, 15:57])


def test_video_eval_transform_stacks_segments_and_views():
  clips = np.stack([_clip(t=4, h=40, w=56, seed=s) for s in range(2)])
  rng = np.random.default_rng(0)
  assert et.VideoEvalTransform(crop_size=32, training=True)(clips, rng).shape == (2, 1, 4, 32, 32, 3)
  assert et.VideoEvalTransform(crop_size=32, training=False, num_views=3)(clips, rng).shape == (2, 3, 4, 32, 32, 3)
  assert et.VideoEvalTransform(crop_size=32, training=False)(clips, rng).shape == (2, 1, 4, 32, 32, 3)


def test_image_train_transform_shapes_and_determinism():
  image = _clip(t=1, h=70, w=50, seed=8)[0]
  a = et.image_train_transform(image, np.random.default_rng(3), crop_size=32)
  b = et.image_train_transform(image, np.random.default_rng(3), crop_size=32)
  assert a.shape == (32, 32, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  gray = et.image_train_transform(image[..., 0], np.random.default_rng(4), crop_size=32)
  assert gray.shape == (32, 32, 3)


def test_image_eval_transform_resizes_then_centre_crops():
  image = _clip(t=1, h=64, w=100, seed=9)[0]
  out = et.image_eval_transform(image, crop_size=56)  # short side int(56 * 256 / 224) = 64: no resize
  np.testing.assert_array_equal(out, image[4:60, 22:78])
  out = et.image_eval_transform(_clip(t=1, h=90, w=120, seed=9)[0], crop_size=56)
  assert out.shape == (56, 56, 3)


def test_posterize_keeps_the_top_bits_and_zero_bits_gives_black():
  image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
  out = et.apply_ops(image, [('PosterizeIncreasing', 2)], fill=(0, 0, 0))
  np.testing.assert_array_equal(out, image & 0xC0)
  assert et.apply_ops(image, [('PosterizeIncreasing', 0)], fill=(0, 0, 0)).max() == 0
