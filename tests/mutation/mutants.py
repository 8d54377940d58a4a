"""Planted bugs for the mutation harness (tests/mutation/run.py).

Each mutant is one exact snippet of one file and its replacement (the snippet
must occur exactly once), plus the tests that should catch it: a targeted
selection, so that the whole harness runs in minutes. The first ten are the
bugs that once survived every test (issue 16); the rest are in core numerics.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Mutant:
  name: str
  path: str
  original: str
  replacement: str
  tests: tuple[str, ...]
  why: str = ''


ORACLE = 'tests/test_train_oracle.py'

MUTANTS = (
    Mutant('bn_stats_not_updated', 'segjax/train.py',
           "batch_stats = keep_if_finite(new_vars.get('batch_stats', {}), state.batch_stats)",
           'batch_stats = keep_if_finite(state.batch_stats, state.batch_stats)',
           (ORACLE + '::test_two_sgd_steps_match_the_oracle',),
           'the train step never updates BatchNorm running statistics'),
    Mutant('dropout_key_not_folded_with_step', 'segjax/train.py',
           'dropout_rng = jax.random.fold_in(rng, state.step)',
           'dropout_rng = jax.random.fold_in(rng, 0)',
           (ORACLE + '::test_dropout_masks_differ_between_steps_and_follow_the_step',),
           'the same dropout mask every step'),
    Mutant('plateau_scale_not_applied', 'segjax/train.py',
           'updates = jax.tree.map(lambda u: u * state.lr_scale.astype(u.dtype), updates)',
           'updates = updates',
           (ORACLE + '::test_updates_scale_exactly_with_lr_scale',),
           "reduce-on-plateau's scale is logged but not applied"),
    Mutant('aux_loss_dropped', 'segjax/train.py',
           'loss = loss + aux_weight * loss_fn(aux, labels)', 'loss = loss',
           (ORACLE + '::test_two_sgd_steps_match_the_oracle',),
           'the auxiliary head gets no loss'),
    Mutant('dice_counts_ignored_pixels', 'segjax/losses.py',
           'probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) * mask',
           'probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)',
           ('tests/test_losses.py::test_dice_with_ignored_pixels_by_hand',),
           'ignored pixels add their probabilities to the Dice denominator'),
    Mutant('dice_ce_drops_class_weights', 'segjax/losses.py',
           'return dice_loss(logits, labels, class_weights=cw)',
           'return dice_loss(logits, labels)',
           ('tests/test_losses.py::test_make_loss_dice_ce_applies_class_weights_to_both_parts',),
           "make_loss('dice_ce', class_weights=...) does not weight the Dice part"),
    Mutant('masks_resampled_bilinearly', 'segjax/data/transforms.py',
           'label = _label_array(_label_image(label).resize((w, h), Image.NEAREST), label.dtype)',
           'label = _label_array(_label_image(label).resize((w, h), Image.BILINEAR), label.dtype)',
           ('tests/test_transforms.py::test_resize_label_is_pil_nearest',),
           'labels resized bilinearly (invents class ids between neighbours)'),
    Mutant('adamw_decays_biases_and_bn_scales', 'segjax/optim.py',
           'weight_decay=wd, mask=decay_mask)', 'weight_decay=wd)',
           ('tests/test_optim.py::test_first_step_by_hand_decays_kernels_only',),
           'AdamW weight decay on every leaf'),
    Mutant('deeplabv3plus_os16_rates_at_os8', 'segjax/models/deeplabv3plus.py',
           '_DEFAULT_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}',
           '_DEFAULT_RATES = {8: (6, 12, 18), 16: (6, 12, 18), 32: (3, 6, 9)}',
           ('tests/test_models.py::test_deeplabv3plus_dilations',),
           'DeepLabV3+ uses the output-stride-16 atrous rates at output stride 8'),
    Mutant('confusion_matrix_ignore_mask_dropped', 'segjax/metrics.py',
           'valid = (labels >= 0) & (labels < num_classes)', 'valid = labels < num_classes',
           ('tests/test_metrics.py::test_padding_rows_with_label_minus_one_are_not_counted',),
           'eval padding rows (label -1) counted in the confusion matrix'),
    # Core numerics.
    Mutant('iou_without_intersection_in_union', 'segjax/metrics.py',
           'iou = _safe_div(tp, gt + pred - tp)', 'iou = _safe_div(tp, gt + pred)',
           ('tests/test_metrics.py::test_hand_computed_case',), 'IoU = tp / (gt + pred)'),
    Mutant('fwiou_weighted_by_prediction', 'segjax/metrics.py',
           'freq = _safe_div(gt, np.full_like(gt, total))',
           'freq = _safe_div(pred, np.full_like(gt, total))',
           ('tests/test_metrics.py::test_hand_computed_case',), 'fwIoU weighted by predicted frequency'),
    Mutant('ce_mean_over_all_pixels', 'segjax/losses.py',
           'return jnp.sum(per_pixel * weights) / jnp.maximum(jnp.sum(weights), 1e-12)',
           'return jnp.sum(per_pixel * weights) / weights.size',
           ('tests/test_losses.py::test_cross_entropy_ignore_and_weights',), 'cross entropy averaged over ignored pixels too'),
    Mutant('poly_power_ignored', 'segjax/optim.py',
           'power=float(c.power)', 'power=1.0',
           ('tests/test_optim.py::test_poly_with_warmup',), 'poly schedule always linear'),
    Mutant('ema_without_warmup', 'segjax/train.py',
           'd = jnp.minimum(decay, (1.0 + t) / (10.0 + t))', 'd = jnp.asarray(decay)',
           ('tests/test_ema.py::test_update_ema_formula',
            'tests/test_ema.py::test_ema_tracks_the_weights_of_every_step'),
           'EMA decay without the num_updates warm-up'),
    Mutant('hflip_forgets_label', 'segjax/data/transforms.py',
           'return image[:, ::-1], label[:, ::-1]', 'return image[:, ::-1], label',
           ('tests/test_transforms.py::test_flips_twice_are_identity',
            'tests/test_transforms.py::test_train_transform_label_is_pil_nearest_replay'),
           'horizontal flip of the image only'),
    Mutant('crop_pads_label_with_zero', 'segjax/data/transforms.py',
           'label = np.pad(label, ((0, ph), (0, pw)), constant_values=ignore_label)',
           'label = np.pad(label, ((0, ph), (0, pw)), constant_values=0)',
           ('tests/test_transforms.py::test_crop_pads_with_ignore',), 'padding labelled as class 0 instead of ignore'),
    Mutant('weight_decay_on_biases', 'segjax/optim.py',
           'return jax.tree.map(lambda p: p.ndim > 1, params)',
           'return jax.tree.map(lambda p: p.ndim >= 1, params)',
           ('tests/test_optim.py::test_sgd_momentum_and_weight_decay_by_hand',),
           'weight decay on biases and BatchNorm scales (all optimizers)'),
    Mutant('labels_misaligned_in_step', 'segjax/train.py',
           "    labels = batch['label']\n", "    labels = batch['label'][:, ::-1]\n",
           ('tests/test_overfit.py::test_a_tiny_model_overfits_one_fixed_batch',),
           'the step trains on labels mirrored against their images'),
    Mutant('updates_ascend_the_loss', 'segjax/train.py',
           'new_params = optax.apply_updates(state.params, updates)',
           'new_params = optax.apply_updates(state.params, jax.tree.map(jnp.negative, updates))',
           ('tests/test_overfit.py::test_a_tiny_model_overfits_one_fixed_batch',),
           'updates applied with the wrong sign'),
)
