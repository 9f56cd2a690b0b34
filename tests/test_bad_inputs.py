"""Bad configs and bad files: each is refused up front with one line naming what is wrong.

Config values are checked in-process through ``config_checks`` / ``validate_config``
(fast, nothing compiled); a representative table goes through the real entry point,
``launch.py`` in a subprocess. Damaged data and weight files are built here.
"""

import importlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile

import ml_collections
import numpy as np
import pytest
from safetensors.numpy import save_file

from configs import base
from configs import bert_base
from configs import quickstart
from conftest import set_fields
from test_data import _fake_batches, _pickle_bytes, _write_tarball
from wormjax.pipeline import config_checks
from wormjax.pipeline import experiment
from wormjax.data import images as images_lib
from wormjax.data import text as text_lib
from wormjax.models import hf_import
from wormjax.models import torchvision_import
from wormjax.models import weight_files
from wormjax.pipeline import image_task
from wormjax.pipeline import text_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF_CONFIG = {"model_type": "bert", "vocab_size": 30, "hidden_size": 8, "num_hidden_layers": 1,
             "num_attention_heads": 2, "intermediate_size": 12, "max_position_embeddings": 16,
             "type_vocab_size": 2}


def _leaves(config):
    return {name for name, _ in config_checks.flatten(config)}


def _image_config(**overrides):
    return set_fields(quickstart.get_config(), overrides)


def _text_config(**overrides):
    return set_fields(bert_base.get_config("rte", "worm"), overrides)


# -- the registry: every field has a check, and no check is stale --------------------

def test_every_base_config_field_has_a_registered_check():
    image, text = _leaves(base.get_config()), _leaves(bert_base.get_config("rte", "worm"))
    assert image - set(config_checks.FIELDS) == set(), "add a check to config_checks.FIELDS"
    assert text - set(config_checks.known_fields("text")) == set(), \
        "add a check to config_checks.TEXT_FIELDS"
    # No entry for a field the base configs dropped, and text-only entries really are.
    assert set(config_checks.FIELDS) == image
    assert set(config_checks.TEXT_FIELDS) == text - image


def test_every_shipped_config_passes():
    names = sorted(n[:-3] for n in os.listdir(os.path.join(REPO, "configs"))
                   if n.endswith(".py") and n not in ("__init__.py", "bert_base.py"))
    assert "quickstart" in names and "bert_rte_worm" in names
    for name in names:
        config_checks.check_config(importlib.import_module(f"configs.{name}").get_config())


# -- bad values, in-process: (make, field, value, what the message must say) -------------

BAD_VALUES = [
    ("image", "pruning.recalibrate_bn_batches", -1, "pruning.recalibrate_bn_batches must be an integer >= 0"),
    ("text", "pruning.recalibrate_bn_batches", 4, "BERT has LayerNorm only"),
    ("image", "optim.sparsity", -1e-4, "optim.sparsity must be in [0.0, 1.0]"),
    ("image", "optim.schedule", "cosine", "unknown optim.schedule 'cosine'"),
    ("image", "optim.step_fractions", "0.75,0.5", "optim.step_fractions must be strictly increasing"),
    ("image", "optim.step_fractions", "a,b", "optim.step_fractions must be comma-separated"),
    ("image", "optim.step_factor", 0.0, "optim.step_factor must be in (0.0, 1.0]"),
    ("image", "optim.decay_norm_and_bias", "yes", "optim.decay_norm_and_bias must be"),
    ("image", "optim.reset_each_epoch", "yes", "optim.reset_each_epoch must be"),
    ("image", "model.bn_scale_init", 0.0, "model.bn_scale_init must be in (0.0, inf)"),
    ("image", "optim.momentum", 1.5, "optim.momentum must be in [0.0, 1.0), got 1.5"),
    ("image", "optim.momentum", -0.1, "optim.momentum must be in [0.0, 1.0)"),
    ("image", "optim.grad_clip_norm", -1.0, "optim.grad_clip_norm must be a finite number >= 0"),
    ("image", "optim.grad_clip_norm", float("inf"), "optim.grad_clip_norm must be a finite"),
    ("image", "optim.weight_decay", -0.1, "optim.weight_decay must be in [0.0, 1.0)"),
    ("image", "optim.learning_rate", 0.0, "optim.learning_rate must be in (0.0, 10.0]"),
    ("image", "optim.learning_rate", float("nan"), "optim.learning_rate must be a number"),
    ("image", "optim.warmup_steps", -1, "optim.warmup_steps must be an integer >= 0"),
    ("image", "optim.batch_size", 0, "optim.batch_size must be an integer >= 1"),
    ("image", "optim.eval_batch_size", 2.5, "optim.eval_batch_size must be an integer"),
    ("image", "optim.name", "lion", "unknown optim.name 'lion'; allowed: 'sgd', 'adamw'"),
    ("image", "model.num_classes", 1, "model.num_classes must be 0 (the data set's 10 "
     "classes) or an integer >= 10, got 1"),
    ("image", "model.num_classes", -3, "model.num_classes must be 0"),
    ("image", "model.width", 0.0, "model.width must be in (0.0, 16.0]"),
    ("image", "model.name", "vgg19", "unknown model.name 'vgg19'"),
    ("image", "model.dtype", "float64", "unknown model.dtype"),
    ("image", "model.replace_head", "yes", "model.replace_head must be True or False"),
    ("image", "model.pretrained", 3, "model.pretrained must be a string"),
    ("image", "data.prefetch", 0, "data.prefetch must be an integer >= 1, got 0"),
    ("image", "data.train_limit", -5, "data.train_limit must be an integer >= 0, got -5"),
    ("image", "data.eval_limit", -1, "data.eval_limit must be an integer >= 0, got -1"),
    ("image", "data.name", "mnist", "unknown data.name 'mnist'"),
    ("image", "data.source", "web", "unknown data.source 'web'"),
    ("image", "data.normalization", "imagenet", "unknown data.normalization"),
    ("image", "data.eval_split", "val", "unknown data.eval_split"),
    ("image", "data.augment", 1, "data.augment must be True or False"),
    ("image", "data.dir", None, "data.dir must be a string"),
    ("image", "experiment.sweep_ratios", "abc", "experiment.sweep_ratios entry 'abc' is "
     "not a number; allowed: comma-separated ratios in [0, 1]"),
    ("image", "experiment.sweep_ratios", "1,2", "experiment.sweep_ratios entry must be in "
     "[0.0, 1.0], got 2.0"),
    ("image", "experiment.schedules", "none,eventually", "experiment.schedules entry"),
    ("image", "experiment.placements", "weights", "experiment.placements entry"),
    ("image", "experiment.num_seeds", 0, "experiment.num_seeds must be an integer >= 1"),
    ("image", "search.window", 1, "search.window must be an integer >= 2, got 1"),
    ("image", "search.prune_ratio", 1.0, "search.prune_ratio must be in (0.0, 1.0)"),
    ("image", "search.stop_distance", 0.0, "search.stop_distance must be in (0.0, 1.0]"),
    ("image", "search.trigger_margin", -0.1, "search.trigger_margin must be in [0.0, 1.0]"),
    ("image", "search.truncation_ratio", 2.0, "search.truncation_ratio must be in [0.0, 1.0]"),
    ("image", "search.schedule", "sometimes", "unknown search.schedule"),
    ("image", "search.placement", "loss", "unknown search.placement"),
    ("image", "search.max_epochs", 0, "search.max_epochs must be an integer >= 1"),
    ("image", "search.prune_ratios", "0.3,x",
     "search.prune_ratios='0.3,x': entry 'x' is not a number"),
    ("image", "search.prune_ratios", "0.3,0.3", "the ratios must be distinct"),
    ("image", "search.primary_ratio", 1.0, "search.primary_ratio must be in [0.0, 1.0)"),
    ("image", "search.record_magnitudes", "yes",
     "search.record_magnitudes must be True or False"),
    ("image", "pruning.mode", "random", "unknown pruning.mode"),
    ("image", "pruning.min_channels", 0, "pruning.min_channels must be an integer >= 1"),
    ("image", "pruning.channel_multiple", 0, "pruning.channel_multiple must be an integer"),
    ("image", "retrain.max_epochs", 0, "retrain.max_epochs must be an integer >= 1"),
    ("image", "retrain.target_kind", "best", "unknown retrain.target_kind"),
    ("image", "retrain.target", 11.0, "retrain.target must be in (0.0, 10.0]"),
    ("image", "seed", -1, "seed must be an integer >= 0"),
    ("image", "log_every_steps", -1, "log_every_steps must be an integer >= 0"),
    ("image", "progress_bar", "no", "progress_bar must be True or False"),
    ("image", "task", "audio", "unknown task 'audio'"),
    ("image", "mesh.data", 0, "mesh.data must be -1 (every device) or an integer >= 1"),
    ("image", "mesh.distributed", "maybe", "unknown mesh.distributed"),
    ("image", "checkpoint.max_to_keep", 0, "checkpoint.max_to_keep must be an integer >= 1"),
    ("text", "model.num_classes", 1, "model.num_classes must be 0 (the data set's 2 classes)"),
    ("text", "model.name", "cifar_vgg11", "unknown model.name 'cifar_vgg11'; allowed: 'bert'"),
    ("text", "model.pretrained", "w.safetensors", "model.pretrained='w.safetensors' is for "
     "image tasks"),
    ("text", "model.checkpoint", " ", "model.checkpoint=' '"),
    ("text", "data.name", "cola", "unknown data.name 'cola'; allowed: 'sst2', 'mrpc', 'rte'"),
    ("text", "data.max_seq_len", 2, "data.max_seq_len must be an integer >= 3"),
    ("text", "data.bucket_min_len", 0, "data.bucket_min_len must be an integer >= 1"),
    ("text", "optim.warmup_fraction", 1.5, "optim.warmup_fraction must be in [0.0, 1.0]"),
    ("text", "search.include_value", "yes", "search.include_value must be True or False"),
    ("text", "search.authors_qk_mask_bug", 1, "search.authors_qk_mask_bug must be"),
    ("text", "pruning.mode", "structured", "unknown pruning.mode 'structured'"),
]


@pytest.mark.parametrize("kind, field, value, message", BAD_VALUES,
                         ids=[f"{k}-{f}={v!r}" for k, f, v, _ in BAD_VALUES])
def test_bad_value_names_the_field_and_the_allowed_range(kind, field, value, message):
    config = (_image_config if kind == "image" else _text_config)()
    # Not type-safe, so that a wrong type (as a config file's first assignment could
    # give) reaches the check instead of ConfigDict's own TypeError.
    config = set_fields(ml_collections.ConfigDict(config.to_dict(), type_safe=False),
                        {field: value})
    with pytest.raises(ValueError) as err:
        config_checks.check_config(config)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_every_registered_field_is_exercised_by_the_bad_value_table():
    covered = {field for _, field, _, _ in BAD_VALUES}
    missing = set(config_checks.known_fields("text")) - covered
    assert missing == set(), f"add a bad value for {sorted(missing)}"


def test_good_edge_values_pass():
    config_checks.check_config(_image_config(**{
        "optim.momentum": 0.0, "optim.grad_clip_norm": 0.0, "model.num_classes": 10,
        "data.train_limit": 0, "experiment.sweep_ratios": "1, 0.5,0", "mesh.data": -1,
        "retrain.target_kind": "absolute", "retrain.target": 1.0}))
    config_checks.check_config(_image_config(**{"model.num_classes": 12}))
    config_checks.check_config(_text_config(**{"data.name": "SST-2", "model.num_classes": 2}))


def test_all_problems_are_reported_at_once_in_one_line():
    with pytest.raises(ValueError) as err:
        config_checks.check_config(_image_config(**{
            "optim.momentum": 1.5, "data.prefetch": 0, "model.num_classes": 1}))
    text = str(err.value)
    assert "optim.momentum" in text and "data.prefetch" in text and "model.num_classes" in text
    assert "\n" not in text


def test_a_misspelled_field_in_a_config_names_its_nearest_spelling():
    config = _image_config()
    config.optim.momentom = 0.5  # a config file's typo: a new field, not an override
    with pytest.raises(ValueError, match=re.escape(
            "unknown config field optim.momentom; did you mean optim.momentum?")):
        config_checks.check_config(config)
    config = _image_config()
    config.serch = {"window": 3}
    with pytest.raises(ValueError, match=re.escape(
            "unknown config field serch.window; did you mean search.window?")):
        config_checks.check_config(config)


def test_text_only_fields_belong_to_text_configs_only():
    config_checks.check_config(_text_config(**{"data.max_seq_len": 64}))
    config = _image_config()
    config.data.max_seq_len = 64  # a BERT field in a CNN config would be silently unused
    with pytest.raises(ValueError, match="unknown config field data.max_seq_len"):
        config_checks.check_config(config)


def test_a_missing_field_is_named():
    config = _image_config()
    del config.data["prefetch"]
    with pytest.raises(ValueError, match="config field data.prefetch is missing"):
        config_checks.check_config(config)


def test_unknown_field_messages():
    known = config_checks.known_fields("text")
    cases = {"optim.momentom": "did you mean optim.momentum?",
             "optimx.momentom": "did you mean optim.momentum?",
             "data.max_len": "did you mean data.max_seq_len?",
             "progressbar": "did you mean progress_bar?",
             "optim.lr": "fields of optim: batch_size, ",
             "nothing.like.it": "top-level fields and groups: checkpoint, data, "}
    for name, expected in cases.items():
        message = config_checks.unknown_field_message(name, known)
        assert message.startswith(f"unknown config field {name}; ") and expected in message


def test_checks_run_before_any_data_is_loaded_or_anything_compiled(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the config was checked")

    monkeypatch.setattr(images_lib, "load_image_dataset", forbidden)
    monkeypatch.setattr(experiment.programs_lib, "build_programs", forbidden)
    monkeypatch.setattr(experiment.distributed, "make_data_parallel", forbidden)
    for field, value in (("optim.momentum", 1.5), ("data.prefetch", 0),
                         ("model.num_classes", 1)):
        with pytest.raises(ValueError, match=re.escape(field)):
            experiment.run_experiment(_image_config(**{field: value}), str(tmp_path / "w"))
        with pytest.raises(ValueError, match=re.escape(field)):
            image_task.ImageTask(_image_config(**{field: value}))
    assert not os.path.exists(tmp_path / "w")


# -- the real entry point: one line, no traceback, the field named ----------------------

def _launch(*args, config="configs/quickstart.py", workdir):
    cmd = [sys.executable, "launch.py", f"--config={config}", "--jax_cache_dir=",
           f"--workdir={workdir}", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def truncated_tarball(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar")
    whole = _write_tarball(folder / "whole.tar.gz", _fake_batches())
    path = folder / "cifar-10-python.tar.gz"
    path.write_bytes(whole.read_bytes()[:300])
    return str(path)


LAUNCH_CASES = [
    (["--config.optim.momentum=1.5"], "optim.momentum must be in [0.0, 1.0), got 1.5"),
    (["--config.optim.grad_clip_norm=-1"], "optim.grad_clip_norm must be a finite number"),
    (["--config.optim.weight_decay=-0.1"], "optim.weight_decay must be in [0.0, 1.0)"),
    (["--config.model.num_classes=1"], "model.num_classes must be 0 (the data set's 10"),
    (["--config.data.prefetch=0"], "data.prefetch must be an integer >= 1, got 0"),
    (["--config.data.train_limit=-5"], "data.train_limit must be an integer >= 0, got -5"),
    (["--config.data.eval_limit=-1"], "data.eval_limit must be an integer >= 0, got -1"),
    (["--config.experiment.sweep_ratios=abc"], "experiment.sweep_ratios entry 'abc'"),
    (["--config.model.width=0"], "model.width must be in (0.0, 16.0], got 0.0"),
    (["--config.search.window=1"], "search.window must be an integer >= 2, got 1"),
    (["--config.optim.momentom=0.5"],
     "unknown config field optim.momentom; did you mean optim.momentum?"),
    (["--config.serch.window=3"],
     "unknown config field serch.window; did you mean search.window?"),
    ("missing config", "config file configs/nope.py does not exist; available configs: "),
    ("truncated tarball", "the tarball's path, then what is wrong"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", LAUNCH_CASES,
                         ids=[str(a) for a, _ in LAUNCH_CASES])
def test_launch_refuses_bad_input_in_one_line(tmp_path, truncated_tarball, args, message):
    if args == "missing config":
        out = _launch(config="configs/nope.py", workdir=tmp_path / "w")
    elif args == "truncated tarball":
        out = _launch("--config.data.name=cifar10", f"--config.data.dir={truncated_tarball}",
                      workdir=tmp_path / "w")
        message = f"wormjax: {truncated_tarball}"
        assert "truncated or corrupt: download it again" in out.stderr.splitlines()[-1]
    else:
        out = _launch(*args, workdir=tmp_path / "w")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("wormjax: ") and message in last, out.stderr[-3000:]
    if args != "truncated tarball":  # refused before the workdir was made
        assert not os.path.exists(tmp_path / "w")
    if args == "missing config":
        assert "configs/quickstart.py" in last and out.returncode == 2
        assert "configs/bert_base.py" not in last  # its get_config needs arguments
    if isinstance(args, list) and "unknown config field" in message:
        assert out.returncode == 2


# -- bad files: CIFAR data ---------------------------------------------------------

@pytest.mark.parametrize("keep", [0, 10, 200, 2000])
def test_truncated_cifar_tarball_names_the_file(tmp_path, keep):
    whole = _write_tarball(tmp_path / "whole.tar.gz", _fake_batches())
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(whole.read_bytes()[:keep])
    with pytest.raises(ValueError) as err:
        images_lib.load_cifar10("train", "local", str(path))
    text = str(err.value)
    assert str(path) in text and "cifar-10-python.tar.gz" in text
    assert "truncated or corrupt" in text


def test_not_a_gzip_file_names_the_file(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_text("<html>404 not found</html>")
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable gzip tarball")):
        images_lib.load_cifar10("test", "local", str(path))


def _tarball_with(path, name, payload):
    batches = _fake_batches()
    _write_tarball(path, batches, skip=(name,))
    with tarfile.open(path, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))
        info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return path


@pytest.mark.parametrize("payload", [b"not a pickle at all", b"",
                                     _pickle_bytes(*_fake_batches()["test_batch"])[:40]])
def test_corrupt_pickle_in_a_valid_tarball_names_the_member(tmp_path, payload):
    path = _tarball_with(tmp_path / "c.tar.gz", "test_batch", payload)
    with pytest.raises(ValueError) as err:
        images_lib.load_cifar10("test", "local", str(path))
    text = str(err.value)
    assert f"{path}:cifar-10-batches-py/test_batch: cannot unpickle it" in text
    assert "expected a python-version CIFAR-10 batch" in text


def test_corrupt_pickle_in_a_folder_names_the_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match=re.escape(f"{folder / 'test_batch'}: cannot unpickle")):
        images_lib.load_cifar10("test", "local", str(folder))


# -- bad files: weights and checkpoint configs -------------------------------------------

GARBAGE = {"garbage": b"this is not a safetensors file" * 4, "empty": b"", "short": b"abc"}


def _truncated_safetensors(path):
    save_file({"w": np.zeros((64, 64), np.float32)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("kind", [*GARBAGE, "truncated"])
def test_garbage_safetensors_for_torchvision_names_the_file(tmp_path, kind):
    path = tmp_path / "vgg.safetensors"
    if kind == "truncated":
        _truncated_safetensors(path)
    else:
        path.write_bytes(GARBAGE[kind])
    with pytest.raises(ValueError) as err:
        torchvision_import.load_state_dict(path)
    text = str(err.value)
    assert text.startswith(f"{path}: not a readable safetensors file (SafetensorError: ")
    assert "expected a safetensors state dict" in text


def _hf_folder(tmp_path, config_text=None):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(HF_CONFIG) if config_text is None else config_text)
    return folder


@pytest.mark.parametrize("kind", [*GARBAGE, "truncated"])
def test_garbage_model_safetensors_for_bert_names_the_file(tmp_path, kind):
    folder = _hf_folder(tmp_path)
    path = folder / "model.safetensors"
    if kind == "truncated":
        _truncated_safetensors(path)
    else:
        path.write_bytes(GARBAGE[kind])
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable safetensors")):
        hf_import.load_hf_bert(str(folder), 2)


@pytest.mark.parametrize("text, reason", [
    ("{not json", "invalid JSON (Expecting property name enclosed in double quotes at "
                  "line 1 column 2)"),
    ("", "invalid JSON (Expecting value at line 1 column 1)"),
    ("[1, 2]", "holds a JSON list, not an object"),
])
def test_invalid_config_json_names_the_file(tmp_path, text, reason):
    folder = _hf_folder(tmp_path, config_text=text)
    save_file({"x": np.zeros(1, np.float32)}, str(folder / "model.safetensors"))
    path = folder / "config.json"
    expected = f"{path}: {reason}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        hf_import.load_hf_bert(str(folder), 2)
    # The text task reads it first, while checking the config.
    config = _text_config(**{"model.checkpoint": str(folder), "data.dir": str(tmp_path)})
    with pytest.raises(ValueError, match=re.escape(expected)):
        text_task.TextTask.validate_config(config)


def test_config_json_that_is_no_bert_config_names_the_file(tmp_path):
    folder = _hf_folder(tmp_path, config_text=json.dumps(dict(HF_CONFIG, hidden_size=7)))
    with pytest.raises(ValueError, match=re.escape(f"{folder / 'config.json'}: BertConfig")):
        hf_import.load_hf_bert(str(folder), 2)


def test_invalid_tokenizer_files_name_the_file(tmp_path):
    folder = _hf_folder(tmp_path)
    (folder / "tokenizer_config.json").write_text("{'do_lower_case': true}")
    with pytest.raises(ValueError, match=re.escape(
            f"{folder / 'tokenizer_config.json'}: invalid JSON")):
        text_lib.checkpoint_lowercase(str(folder))
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match=re.escape(
            f"{folder / 'tokenizer.json'}: not a readable tokenizer.json")):
        text_lib.load_tokenizer(str(folder))


def test_invalid_safetensors_index_names_the_file(tmp_path):
    folder = _hf_folder(tmp_path)
    (folder / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(ValueError, match=re.escape(
            f"{folder / 'model.safetensors.index.json'}: no \"weight_map\"")):
        hf_import.read_state_dict(str(folder))


def test_pth_without_torch_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    path = tmp_path / "resnet18.pth"
    path.write_bytes(b"whatever")
    with pytest.raises(ValueError) as err:
        torchvision_import.load_state_dict(path)
    assert isinstance(err.value, ImportError)  # still an ImportError for old callers
    assert str(err.value).startswith(f"{path} is a PyTorch pickle and reading it needs torch")
    assert ".safetensors" in str(err.value)
    folder = _hf_folder(tmp_path)
    (folder / "pytorch_model.bin").write_bytes(b"whatever")
    with pytest.raises(weight_files.TorchNotInstalledError,
                       match=re.escape(f"{folder / 'pytorch_model.bin'} is a PyTorch pickle")):
        hf_import.read_state_dict(str(folder))


def test_unreadable_pth_names_the_file(tmp_path):
    torch = pytest.importorskip("torch")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"garbage" * 20)
    whole = tmp_path / "whole.pth"
    torch.save({"w": torch.zeros(64, 64)}, str(whole))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(whole.read_bytes()[:300])
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], str(not_a_dict))
    for path, reason in ((garbage, "not a readable PyTorch checkpoint (UnpicklingError"),
                         (truncated, "not a readable PyTorch checkpoint (RuntimeError"),
                         (not_a_dict, "holds a list; expected a torch.save'd state dict")):
        with pytest.raises(ValueError, match=re.escape(f"{path}: {reason}")):
            torchvision_import.load_state_dict(path)


def test_every_override_the_docs_show_names_a_known_field():
    known = config_checks.known_fields("text")
    for doc in ["README.md"] + [os.path.join("docs", n) for n in
                                os.listdir(os.path.join(REPO, "docs")) if n.endswith(".md")]:
        with open(os.path.join(REPO, doc), encoding="utf-8") as f:
            fields = set(re.findall(r"--config\.([A-Za-z_][\w.]*\w)=", f.read()))
        assert fields - set(known) == set(), doc


@pytest.mark.slow
@pytest.mark.parametrize("body, message", [
    ("def get_config(:\n", "failed to load (line 1): SyntaxError"),
    ("def get_config():\n    raise RuntimeError('boom')\n",
     "failed to load: RuntimeError: boom"),
])
def test_a_config_file_that_fails_to_load_is_one_line(tmp_path, body, message):
    path = tmp_path / "broken.py"
    path.write_text(body)
    out = _launch(config=str(path), workdir=tmp_path / "w")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert message in out.stderr.strip().splitlines()[-1]
