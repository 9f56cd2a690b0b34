"""Both tasks implement ``pipeline.task.Task``: every member the pipeline uses."""

import typing

import numpy as np

from configs import quickstart
from wormjax.pipeline import image_task
from wormjax.pipeline import task as task_lib
from wormjax.pipeline import text_task


def _members(protocol) -> set[str]:
    names = set(typing.get_type_hints(protocol)) | {
        n for n, v in vars(protocol).items() if callable(v) or isinstance(v, property)}
    return {n for n in names if not n.startswith("_")}


def test_the_image_task_is_a_compactable_task():
    task = image_task.ImageTask(quickstart.get_config())
    assert isinstance(task, task_lib.CompactableTask)
    flops = task.forward_flops(task.init_variables(0))
    assert flops.longest == flops.train and flops.by_length == {}


def test_the_text_task_class_has_every_member():
    instance_attributes = {"kind", "name", "persistent_reference_mask", "model", "selector",
                           "batch_size", "eval_batch_size", "steps_per_epoch"}
    missing = {n for n in _members(task_lib.Task) - instance_attributes
               if not hasattr(text_task.TextTask, n)}
    assert not missing
    assert not (instance_attributes - {"kind", "persistent_reference_mask"}) & set(
        vars(text_task.TextTask))  # set per instance, in __init__


def test_eval_limit_cuts_an_evaluation_on_the_training_split():
    # The authors' protocol: evaluate on (a balanced part of) the training subset.
    c = quickstart.get_config()
    c.data.train_limit, c.data.eval_limit, c.data.eval_split = 200, 50, "train"
    task = image_task.ImageTask(c)
    assert len(task.train_split) == 200 and len(task.eval_split) == 50
    assert np.bincount(task.eval_split.labels).tolist() == [5] * 10
    train_rows = {img.tobytes() for img in task.train_split.images}
    assert all(img.tobytes() in train_rows for img in task.eval_split.images)
