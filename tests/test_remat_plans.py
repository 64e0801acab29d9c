"""config.model.remat='auto': the per-chip plan table (jepa_jax/remat_plans.py), its fallback, and validation."""
import ml_collections
import pytest

from jepa_jax import config_files
from jepa_jax import config_validation
from jepa_jax import remat_plans

PLANS = {("vit_large", 224, 16, "v5p"): ((24, "none"), (64, "dots")), ("vit_large", 224, 16, "v6e"): ((24, "dots"),)}


@pytest.fixture
def plans(monkeypatch):
  monkeypatch.setattr(remat_plans, "REMAT_PLANS", PLANS)


@pytest.mark.parametrize("kind, chip", [("TPU v5", "v5p"), ("TPU v5p", "v5p"), ("TPU v5 lite", "v5e"),
                                        ("TPU v6 lite", "v6e"), ("TPU v4", "v4"), ("NVIDIA H100 80GB HBM3", None),
                                        ("cpu", None)])
def test_device_kinds_name_their_chip(kind, chip):
  assert remat_plans.chip_of(kind) == chip


@pytest.mark.parametrize("kind, batch, remat", [
    ("TPU v5", 24, "none"), ("TPU v5", 8, "none"),    # up to a row's batch: that row
    ("TPU v5", 25, "dots"), ("TPU v5", 64, "dots"),   # above it: the next row
    ("TPU v6 lite", 24, "dots"),
])
def test_the_plan_for_a_chip_and_batch_is_the_smallest_row_that_covers_it(plans, kind, batch, remat):
  got, why = remat_plans.lookup("vit_large", 224, 16, kind, batch)
  assert got == remat and "up to" in why


@pytest.mark.parametrize("args, reason", [
    (("vit_large", 224, 16, "TPU v5", 65), "more than the plans compiled (64)"),
    (("vit_large", 224, 16, "TPU v5 lite", 8), "no plan"),
    (("vit_large", 224, 16, "NVIDIA H100 80GB HBM3", 8), "no plan"),
    (("vit_large", 256, 16, "TPU v5", 8), "no plan"),   # another clip size is another plan
    (("vit_huge", 224, 16, "TPU v5", 8), "no plan"),
])
def test_no_row_falls_back_to_full_remat_and_says_why(plans, args, reason):
  remat, why = remat_plans.lookup(*args)
  assert remat == remat_plans.FALLBACK == "full" and reason in why


def test_plans_are_for_the_splash_kernel_only(plans):
  remat, why = remat_plans.lookup("vit_large", 224, 16, "TPU v5", 24, kernel="xla")
  assert remat == "full" and "'xla'" in why


def test_resolve_replaces_auto_in_place_and_keeps_an_explicit_remat(plans):
  model = ml_collections.ConfigDict({"name": "vit_large", "crop_size": 224, "num_frames": 16, "remat": "auto"})
  assert remat_plans.resolve(model, "TPU v5", 24, "splash") == "none" and model.remat == "none"
  model.remat = "dots"
  assert remat_plans.resolve(model, "TPU v5", 24, "splash") == "dots" and model.remat == "dots"


def test_every_shipped_plan_names_a_remat_the_model_builds():
  for key, rows in remat_plans.REMAT_PLANS.items():
    assert len(key) == 4 and key[3] in {chip for _, chip in remat_plans.CHIPS}
    assert rows and all(remat in ("none", "dots", "dots_no_batch", "full") and batch > 0 for batch, remat in rows)


def test_validation_accepts_auto_and_names_the_choices_for_a_wrong_remat():
  model = config_files.load("default").model
  model.remat = "auto"
  config_validation.validate_model(model, platform="cpu")
  model.remat = "light"
  with pytest.raises(config_validation.ConfigError, match=r"config\.model\.remat='light'.*'auto'"):
    config_validation.validate_model(model, platform="cpu")


@pytest.mark.parametrize("name, per_chip", [("vitl16", 24), ("vith16", 24), ("vith16_384", 10)])
def test_the_shipped_config_takes_a_remat_lighter_than_full_on_v5p_at_the_official_clips_per_chip(name, per_chip):
  """Issue 15's target, as the table records it: the default config at the official clips per v5p chip (24; 10 for
  ViT-H/16 at 384 px)."""
  model = config_files.load(name).model
  assert model.remat == "auto"
  kernel = "splash"  # attention_impl '' on TPU (jepa_jax/models/attention.py)
  assert remat_plans.resolve(model, "TPU v5", per_chip, kernel) in ("none", "dots", "dots_no_batch")
  assert remat_plans.lookup(model.name, model.crop_size, model.num_frames, "TPU v5 lite", per_chip)[0] == "full"


@pytest.mark.parametrize("name, per_chip, on_v5p, on_v6e", [("vjepa2/vitg16_256", 24, "dots", "dots"),
                                                         ("vjepa2/vitl16_256_cooldown", 12, "dots", "full"),
                                                         ("vjepa2/vitg16_256_cooldown", 6, "dots", "full"),
                                                         ("vjepa2/vith16_256", 24, "full", "full")])
def test_the_vjepa2_recipe_takes_the_compiled_plan_and_full_remat_elsewhere(name, per_chip, on_v5p, on_v6e):
  """V-JEPA 2 configs say 'auto': a compiled row gives its plan, a config without one (ViT-H/16 at 256 px was not
  compiled), a larger batch and every other chip keep the official full remat. v6e has a third of v5p's HBM: ViT-g/16
  at 16 frames fits with dots (29.11 of 31.25 GiB), the 64-frame cooldowns do not (35.8 and 33.6 GiB needed)."""
  model = config_files.load(name).model
  assert model.remat == "auto"
  assert remat_plans.lookup(model.name, model.crop_size, model.num_frames, "TPU v5", per_chip)[0] == on_v5p
  assert remat_plans.lookup(model.name, model.crop_size, model.num_frames, "TPU v6 lite", per_chip)[0] == on_v6e
  assert remat_plans.lookup(model.name, model.crop_size, model.num_frames, "NVIDIA H100", per_chip)[0] == "full"
  assert remat_plans.lookup(model.name, model.crop_size, model.num_frames, "TPU v5", 2 * per_chip)[0] == "full"
