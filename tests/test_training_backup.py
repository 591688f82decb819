"""``ResumableBackup`` saves every ``save_freq`` steps with its own (public-API) bookkeeping."""

import pytest

from fusionnet_tf.training.callbacks import ResumableBackup


def _saves(backup, batches, epochs=1):
    saved = []
    backup.save_state = lambda epoch, step: saved.append((epoch, step))
    for epoch in range(epochs):
        backup.on_epoch_begin(epoch)
        for batch in batches:
            backup.on_train_batch_end(batch, {"loss": 0.5})
        backup.on_epoch_end(epoch, {"loss": 0.5})
    return saved


def test_saves_every_save_freq_steps_and_at_epoch_end(tmp_path):
    backup = ResumableBackup(tmp_path, save_freq=3, steps_per_epoch=8)
    assert _saves(backup, range(8), epochs=2) == [
        (0, 3), (0, 6), (1, 0), (1, 3), (1, 6), (2, 0)]


def test_counts_steps_when_batches_jump_with_steps_per_execution(tmp_path):
    backup = ResumableBackup(tmp_path, save_freq=3, steps_per_epoch=8)
    # steps_per_execution=2: fit reports batches 1, 3, 5, 7
    assert _saves(backup, [1, 3, 5, 7]) == [(0, 4), (0, 8), (1, 0)]


def test_first_report_of_each_epoch_counts_all_its_steps(tmp_path):
    backup = ResumableBackup(tmp_path, save_freq=2, steps_per_epoch=8)
    # steps_per_execution=2: the first report (batch 1) already covers 2 steps
    assert _saves(backup, [1, 3, 5, 7], epochs=2) == [
        (0, 2), (0, 4), (0, 6), (0, 8), (1, 0), (1, 2), (1, 4), (1, 6), (1, 8), (2, 0)]
    # steps_per_execution=3 over 6 steps: batches 2 and 5
    backup = ResumableBackup(tmp_path, save_freq=3, steps_per_epoch=6)
    assert _saves(backup, [2, 5]) == [(0, 3), (0, 6), (1, 0)]


def test_no_save_after_a_non_finite_loss(tmp_path):
    backup = ResumableBackup(tmp_path, save_freq=1, steps_per_epoch=4)
    saved = []
    backup.save_state = lambda epoch, step: saved.append((epoch, step))
    backup.on_epoch_begin(0)
    backup.on_train_batch_end(0, {"loss": float("nan")})
    assert saved == []


def test_save_freq_must_be_a_positive_integer(tmp_path):
    with pytest.raises(ValueError, match="`save_freq` must be an integer >= 1"):
        ResumableBackup(tmp_path, save_freq=0, steps_per_epoch=4)
