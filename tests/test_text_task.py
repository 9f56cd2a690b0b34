"""The text task (BERT on GLUE) end to end on a tiny random BERT and tiny GLUE files."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

import wormjax
from conftest import set_fields
from configs import bert_base
from configs import bert_rte_worm
from wormjax.pipeline import checkpoint as ckpt_lib
from wormjax.pipeline import experiment
from wormjax import search as search_lib
from wormjax import selectors as selectors_lib
from wormjax.models import hf_import
from wormjax.pipeline import run as run_lib
from wormjax.pipeline import state as state_lib
from wormjax.data import text as text_lib
from wormjax.pipeline import text_task
from wormjax.pipeline import variants as variants_lib

HIDDEN, LAYERS, FF, MAX_POS = 32, 2, 64, 64
WORDS = ("the cat dog sat ran on mat park a big small red blue house tree car saw man "
         "woman bird flew over under near far old new").split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "not"] + WORDS
BUCKETS = (16, 32)  # max_seq_len 32, bucket_min_len 16
DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def _write_checkpoint(folder):
    """A random 2-layer, 32-wide BERT in Hugging Face layout, without a classifier."""
    rng = np.random.default_rng(0)
    shapes = {"embeddings.word_embeddings.weight": (len(VOCAB), HIDDEN),
              "embeddings.position_embeddings.weight": (MAX_POS, HIDDEN),
              "embeddings.token_type_embeddings.weight": (2, HIDDEN),
              "embeddings.LayerNorm.weight": (HIDDEN,), "embeddings.LayerNorm.bias": (HIDDEN,),
              "pooler.dense.weight": (HIDDEN, HIDDEN), "pooler.dense.bias": (HIDDEN,)}
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            shapes[p + name + ".weight"] = (HIDDEN, HIDDEN)
            shapes[p + name + ".bias"] = (HIDDEN,)
        shapes.update({p + "intermediate.dense.weight": (FF, HIDDEN),
                       p + "intermediate.dense.bias": (FF,),
                       p + "output.dense.weight": (HIDDEN, FF), p + "output.dense.bias": (HIDDEN,)})
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes.update({f"{p}{ln}.weight": (HIDDEN,), f"{p}{ln}.bias": (HIDDEN,)})
    tensors = {}
    for name, shape in shapes.items():
        if name.endswith("LayerNorm.weight"):
            tensors["bert." + name] = np.ones(shape, np.float32)
        else:
            tensors["bert." + name] = (0.05 * rng.normal(size=shape)).astype(np.float32)
    folder.mkdir()
    config = {"model_type": "bert", "vocab_size": len(VOCAB), "hidden_size": HIDDEN,
              "num_hidden_layers": LAYERS, "num_attention_heads": 2, "intermediate_size": FF,
              "max_position_embeddings": MAX_POS, "type_vocab_size": 2, "hidden_act": "gelu",
              **DROPOUT}
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return str(folder)


def _write_rte(folder, num_train=128, num_dev=40):
    """RTE-format TSVs; 'not' in the hypothesis means not_entailment (learnable)."""
    rng = np.random.default_rng(1)
    (folder / "RTE").mkdir(parents=True)
    for split, n in (("train", num_train), ("dev", num_dev)):
        lines = ["index\tsentence1\tsentence2\tlabel"]
        for i in range(n):
            a = " ".join(rng.choice(WORDS, size=rng.integers(2, 14)))
            negated = bool(rng.integers(2))
            b = ("not " if negated else "") + " ".join(rng.choice(WORDS, rng.integers(2, 12)))
            lines.append(f"{i}\t{a}\t{b}\t{'not_entailment' if negated else 'entailment'}")
        (folder / "RTE" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return str(folder)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    return {"checkpoint": _write_checkpoint(root / "tiny_bert"),
            "glue": _write_rte(root / "glue")}


def tiny_config(files, **overrides):
    c = bert_rte_worm.get_config()
    c.model.checkpoint = files["checkpoint"]
    c.data.dir = files["glue"]
    c.data.max_seq_len = BUCKETS[-1]
    c.data.bucket_min_len = BUCKETS[0]
    c.optim.learning_rate = 1e-3  # a random model: masks must move within three epochs
    c.optim.batch_size = 16
    c.optim.eval_batch_size = 16
    c.search.window = 2
    c.search.max_epochs = 2
    c.search.stop_distance = 0.001
    c.search.trigger_margin = 0.9  # WORM truncates from epoch 1, when the window is full
    c.retrain.max_epochs = 1
    c.retrain.target = 5.0  # never reached: the retraining epoch always runs
    c.experiment.schedules = "none,worm"
    c.experiment.placements = "gradient,update"
    c.log_every_steps = 0
    c.progress_bar = False
    return set_fields(c, overrides)


@pytest.fixture(scope="module")
def task(files):
    return text_task.TextTask(tiny_config(files))


# -- the task protocol -------------------------------------------------------

def test_batches_have_fixed_shapes_and_exact_steps_per_epoch(task):
    assert task.kind == "text" and task.name == "rte"
    assert task.persistent_reference_mask
    assert task.num_train_examples == 128 and task.num_eval_examples == 40
    assert task.train_bucket_lengths == BUCKETS  # both buckets hold full batches
    for seed, epoch in ((0, 0), (0, 1), (3, 7)):
        batches = list(task.train_batches(seed, epoch))
        assert len(batches) == task.steps_per_epoch
        assert {b["input_ids"].shape for b in batches} == {(16, L) for L in BUCKETS}
        for b in batches:
            assert set(b) == {"input_ids", "token_type_ids", "attention_mask", "label"}
            assert b["label"].dtype == np.int32
    # Resuming mid-epoch yields the rest of the same epoch.
    tail = list(task.train_batches(0, 1, start_step=2))
    np.testing.assert_array_equal(tail[0]["input_ids"],
                                  list(task.train_batches(0, 1))[2]["input_ids"])
    evals = list(task.eval_batches())
    assert sum(float(b["mask"].sum()) for b in evals) == task.num_eval_examples
    assert {b["input_ids"].shape[0] for b in evals} == {16}


def test_subsets_are_deterministic_and_seed_independent(files, task):
    small = text_task.TextTask(tiny_config(files, **{"data.train_limit": 64,
                                                      "data.eval_limit": 20,
                                                      "seed": 5}))
    assert small.num_train_examples == 64 and small.num_eval_examples == 20
    # The same rows as the full (seed 0) task at the seed-independent indices.
    picked = text_lib.balanced_subset_indices(task.train_split.labels, 64, 0)
    for j, i in enumerate(picked):
        np.testing.assert_array_equal(small.train_split.input_ids[j],
                                      task.train_split.input_ids[i])
    np.testing.assert_array_equal(text_lib.subset_indices(10, 0), np.arange(10))
    np.testing.assert_array_equal(text_lib.subset_indices(100, 30, 1),
                                  text_lib.subset_indices(100, 30, 1))
    assert not np.array_equal(text_lib.subset_indices(100, 30, 0),
                              text_lib.subset_indices(100, 30, 1))


def test_a_start_step_outside_the_epoch_is_refused(task):
    steps = task.steps_per_epoch
    for bad in (-1, steps + 1):
        with pytest.raises(ValueError, match=rf"start_step must be in 0..{steps} "):
            next(text_lib.text_batches(task.train_split, task.batch_size,
                                       boundaries=task.boundaries, start_step=bad))
    # The last step is a legal resume point: nothing is left of that epoch.
    assert list(text_lib.text_batches(task.train_split, task.batch_size,
                                      boundaries=task.boundaries, start_step=steps)) == []


def test_eval_limit_cuts_an_evaluation_on_the_training_split(files):
    # The authors' protocol evaluates on the training split; eval_limit picks
    # that many of the training subset's own examples.
    t = text_task.TextTask(tiny_config(files, **{"data.eval_split": "train",
                                                  "data.train_limit": 64,
                                                  "data.eval_limit": 20}))
    assert t.num_train_examples == 64 and t.num_eval_examples == 20
    train_rows = {tuple(ids) for ids in t.train_split.input_ids}
    assert all(tuple(ids) in train_rows for ids in t.eval_split.input_ids)
    whole = text_task.TextTask(tiny_config(files, **{"data.eval_split": "train",
                                                      "data.train_limit": 64}))
    assert whole.eval_split is whole.train_split


def test_training_subset_is_class_balanced_and_shuffled():
    # 90 of class 0 first, then 10 of class 1: a balanced 16 takes 8 of each,
    # and not simply the first 8 rows of class 0.
    labels = np.array([0] * 90 + [1] * 10)
    picked = text_lib.balanced_subset_indices(labels, 16, 0)
    assert np.bincount(labels[picked]).tolist() == [8, 8]
    assert picked.tolist() == sorted(set(picked.tolist()))
    assert picked[:8].tolist() != list(range(8))
    np.testing.assert_array_equal(picked, text_lib.balanced_subset_indices(labels, 16, 0))
    # Too few of class 1: it gives all it has, class 0 fills the rest.
    assert np.bincount(labels[text_lib.balanced_subset_indices(labels, 40)]).tolist() == [
        30, 10]
    np.testing.assert_array_equal(text_lib.balanced_subset_indices(labels, 0),
                                  np.arange(100))


def test_initialisation_is_the_checkpoint_with_a_seeded_head(task, files):
    a, b, other = task.init_variables(0), task.init_variables(0), task.init_variables(1)
    assert a["batch_stats"] == {}
    assert task.import_info.initialised == ("classifier/bias", "classifier/kernel")
    flat = dict(selectors_lib.leaves_with_paths(a["params"]))
    # The train step donates its buffers: consuming one run's variables must
    # leave the next run's initialisation intact.
    jax.jit(lambda t: jax.tree_util.tree_map(lambda x: x * 0, t), donate_argnums=0)(
        b["params"])
    for path, leaf in selectors_lib.leaves_with_paths(task.init_variables(0)["params"]):
        np.testing.assert_array_equal(leaf, flat[path])
    other_flat = dict(selectors_lib.leaves_with_paths(other["params"]))
    assert not np.allclose(flat["classifier/kernel"], other_flat["classifier/kernel"])
    enc = "bert/encoder/layer_1/attention/self/query/kernel"
    np.testing.assert_array_equal(flat[enc], other_flat[enc])
    # Seed 1's head is the draw load_hf_bert itself makes for rng=1.
    ref = hf_import.load_hf_bert(files["checkpoint"], 2, rng=1).variables["params"]
    np.testing.assert_array_equal(other_flat["classifier/kernel"], ref["classifier"]["kernel"])

    batch = next(iter(task.eval_batches()))
    logits, stats = task.forward(a, batch, False, None)
    assert logits.shape == (16, 2) and logits.dtype == jnp.float32 and stats == {}


@pytest.mark.parametrize("include_value", [False, True])
def test_truncation_touches_only_query_key_kernels(files, task, include_value):
    t = task if not include_value else text_task.TextTask(
        tiny_config(files, **{"search.include_value": True}))
    params = t.init_variables(0)["params"]
    layout = t.selector(params)
    names = "query|key|value" if include_value else "query|key"
    assert len(layout.paths) == LAYERS * len(names.split("|"))
    assert all(re.search(rf"/self/({names})/kernel$", p) for p in layout.paths)
    tx = wormjax.worm_truncation(t.selector)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    truncation = wormjax.WormTruncationState(
        keep=jnp.zeros((layout.num_entries,), jnp.bool_),
        ratio=jnp.float32(3e-3), active=jnp.bool_(True))
    updates, _ = jax.jit(lambda g, s: tx.update(g, s, truncation=truncation))(
        grads, tx.init(params))
    for path, leaf in selectors_lib.leaves_with_paths(updates):
        expected = 3e-3 if path in layout.paths else 1.0
        np.testing.assert_allclose(leaf, expected, rtol=1e-6, err_msg=path)


def test_a_hub_checkpoint_too_short_for_max_seq_len_fails_before_loading(
        files, monkeypatch):
    # A Hub id resolves (downloads) only in the task; its length limit is
    # checked right then, before GLUE is read or the weights are loaded.
    def no_loading(*args, **kwargs):
        raise AssertionError("data was read before max_seq_len was checked")

    monkeypatch.setattr(text_task.hf_import, "resolve_checkpoint_dir",
                        lambda name, **kw: files["checkpoint"])
    monkeypatch.setattr(text_task.glue_lib, "load_glue", no_loading)
    monkeypatch.setattr(text_task.hf_import, "load_hf_bert", no_loading)
    config = tiny_config(files, **{"model.checkpoint": "someone/tiny-bert",
                                   "data.max_seq_len": MAX_POS + 1})
    with pytest.raises(ValueError, match=re.escape(
            f"data.max_seq_len={MAX_POS + 1} exceeds the checkpoint's "
            f"max_position_embeddings={MAX_POS}; allowed: 3..{MAX_POS}")):
        text_task.TextTask(config)


@pytest.mark.parametrize("key, value, message", [
    ("data.name", "cola", "data.name"),
    ("data.source", "hub", "data.source"),
    ("data.max_seq_len", 2, "data.max_seq_len"),
    ("data.max_seq_len", MAX_POS + 1, "max_position_embeddings"),
    ("data.eval_split", "validation", "data.eval_split"),
    ("model.dtype", "float64", "model.dtype"),
    ("model.checkpoint", "/no/such/bert", "model.checkpoint"),
    ("data.dir", "", "--config.data.dir"),
    ("data.dir", "/no/such/glue", "data.dir"),
    ("data.bucket_min_len", 0, "data.bucket_min_len"),
    ("optim.warmup_fraction", 1.5, "warmup_fraction"),
    ("task", "audio", "task"),
    ("pruning.mode", "structured", "pruning.mode"),  # BatchNorm channels only
])
def test_bad_text_config_fails_before_any_work(files, tmp_path, monkeypatch, key, value,
                                              message):
    def no_loading(*args, **kwargs):
        raise AssertionError("data was read before the config was checked")

    monkeypatch.setattr(text_task.glue_lib, "load_glue", no_loading)
    monkeypatch.setattr(text_task.hf_import, "load_hf_bert", no_loading)
    with pytest.raises(ValueError, match=re.escape(message)):
        experiment.run_experiment(tiny_config(files, **{key: value}), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "config.json")


def test_configs_share_the_bert_defaults():
    import importlib  # noqa: PLC0415
    for task_name in ("sst2", "mrpc", "rte"):
        for arm, schedule in (("eb", "none"), ("worm", "worm")):
            c = importlib.import_module(f"configs.bert_{task_name}_{arm}").get_config()
            assert (c.task, c.data.name, c.search.schedule) == ("text", task_name, schedule)
            assert (c.search.window, c.search.stop_distance, c.search.trigger_margin,
                    c.search.truncation_ratio) == (3, 0.01, 0.005, 3e-3)
            assert (c.optim.name, c.optim.learning_rate, c.optim.batch_size) == (
                "adamw", 2e-5, 32)
            assert c.model.checkpoint == bert_base.default_checkpoint()
            assert c.data.dir == ""


def test_train_flops_are_the_batch_weighted_mean_over_buckets(task):
    variables = task.init_variables(0)
    flops = task.forward_flops(variables)
    by_length = flops.by_length
    assert by_length[BUCKETS[0]] < by_length[BUCKETS[-1]]  # shorter bucket, fewer FLOPs
    assert flops.longest == by_length[BUCKETS[-1]]
    counts = task.train_batches_per_length
    assert sum(counts.values()) == task.steps_per_epoch and set(counts) == set(BUCKETS)
    lengths = [b["input_ids"].shape[1] for b in task.train_batches(0, 0)]
    assert counts == {L: lengths.count(L) for L in BUCKETS}
    expected = sum(counts[L] * by_length[L] for L in BUCKETS) / task.steps_per_epoch
    mean = flops.train
    assert mean == pytest.approx(expected, rel=1e-12)
    assert by_length[BUCKETS[0]] < mean < by_length[BUCKETS[-1]]


# -- the real entry point ------------------------------------------------------

@pytest.fixture(scope="module")
def text_run(files, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("text_run"))
    printed = []
    payload = experiment.run_experiment(tiny_config(files), workdir, print_fn=printed.append)
    return workdir, payload, printed


def test_text_experiment_outputs_and_glue_table(text_run):
    workdir, payload, printed = text_run
    for name in ("summary.json", "metrics.jsonl", "mask_distance.png", "loss_curves.png",
                 "config.json"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    assert [r["variant"] for r in payload["runs"]] == ["eb", "worm_gradient", "worm_update"]
    assert [r["placement"] for r in payload["runs"]] == ["gradient", "gradient", "update"]
    for run in payload["runs"]:
        assert run["task"] == "rte" and run["pruning_mode"] == "reference"
        assert 0.0 <= run["pre_prune_accuracy"] <= 1.0
        assert run["retrain_accuracy_after_one_epoch"] is not None
        assert run["params"]["pruned"] < run["params"]["dense"]
        flops = run["flops"]
        assert flops["dense_forward_per_example"] > flops["dense_train_forward_per_example"]
        # 3 forward passes' worth per trained example, at the epoch's mean bucket.
        assert flops["training_flops_spent"] == pytest.approx(
            3 * flops["dense_train_forward_per_example"] * run["examples_trained"])
    glue = payload["tables"]["glue"]
    assert "Pre-Pruned Accuracy" in glue and "rte" in glue and "WORM" in glue
    assert any("Epochs to Prune" in text for text in printed)
    runs = [json.load(open(os.path.join(workdir, f"{v}_seed0", "summary.json")))
            for v in ("eb", "worm_gradient", "worm_update")]
    for run, expected in zip(runs, ([False, False], [False, True], [False, True])):
        search = [r["truncation_active"] for r in run["trajectory"] if r["phase"] == "search"]
        assert search == expected
        # Two classes: F1 beside accuracy, read where the accuracies are.
        search_recs = [r for r in run["trajectory"] if r["phase"] == "search"]
        retrain = [r for r in run["trajectory"] if r["phase"] == "retrain"]
        assert run["pre_prune_f1"] == search_recs[-1]["eval_f1"]
        assert run["retrain_f1_after_one_epoch"] == retrain[0]["eval_f1"]
        assert 0.0 <= run["post_prune_f1"] <= 1.0
    first = [run["trajectory"][0] for run in runs]
    # Same initialisation and data for every arm: the same first epoch (the
    # update placement is another compiled step, so only to rounding).
    assert (first[0]["train_loss"], first[0]["d_max"]) == (first[1]["train_loss"],
                                                         first[1]["d_max"])
    assert first[2]["train_loss"] == pytest.approx(first[0]["train_loss"], rel=1e-5)
    worm = payload["runs"][1]
    assert worm["trigger_threshold"] == pytest.approx(0.001 + 0.9)


def test_text_steps_compile_once_per_bucket_not_per_epoch(text_run):
    _, payload, _ = text_run
    counts = payload["compile_counts"]
    placements = 2
    # 3 arms x (2 search + 1 retrain epochs) ran; each step compiled per shape only.
    assert counts["train_step"] == len(BUCKETS) * placements
    assert counts["train_step_masked"] == len(BUCKETS) * placements
    assert counts["eval_step"] == len(BUCKETS) * placements
    assert counts["prune"] == 1 and counts["eb_update"] == 2


def test_reference_pruning_keeps_its_persistent_mask_while_retraining(text_run, files, task):
    workdir, payload, _ = text_run
    config, t = tiny_config(files), task  # the task of this very config
    variables = t.init_variables(0)
    total = (config.search.max_epochs + config.retrain.max_epochs) * t.steps_per_epoch
    tx = state_lib.make_optimizer(config.optim, t.selector, total_steps=total)
    layout = t.selector(variables["params"])
    like = {"state": state_lib.create_train_state(variables, tx, 0),
            "eb": search_lib.init(layout.num_entries,
                                  variants_lib.search_config(config, experiment.variants_from_config(
                                      config)[0])),
            "param_mask": jax.tree_util.tree_map(jnp.ones_like, variables["params"])}
    ckpt = ckpt_lib.RunCheckpointer(os.path.join(workdir, "eb_seed0", "checkpoints"))
    try:
        step = ckpt.latest_step()
        meta = ckpt.restore_meta(step)
        tree = ckpt.restore(step, like)
    finally:
        ckpt.close()
    # The last retraining epoch's checkpoint ends the run (no separate "done" save).
    assert meta["phase"] == "retrain" and meta["has_param_mask"]
    retrain = [r for r in meta["records"] if r["phase"] == "retrain"]
    assert len(retrain) == 1 and retrain[0]["steps"] == t.steps_per_epoch
    params = dict(selectors_lib.leaves_with_paths(tree["state"].params))
    masks = dict(selectors_lib.leaves_with_paths(tree["param_mask"]))
    kernel = "bert/encoder/layer_0/intermediate/dense/kernel"
    assert 0.45 < 1.0 - float(masks[kernel].mean()) < 0.55  # per-tensor 50%
    assert float(masks["bert/encoder/layer_0/output/LayerNorm/scale"].min()) == 1.0
    for path, mask in masks.items():
        # Pruned entries are still exactly zero after a retraining epoch of AdamW.
        assert not np.any(np.asarray(params[path])[np.asarray(mask) == 0]), path
    nonzero = sum(int(np.count_nonzero(p)) for p in params.values())
    assert nonzero == payload["runs"][0]["params"]["pruned"]


# -- the WORM authors' recipe --------------------------------------------------

def _optimizer_counts(opt_state) -> list[int]:
    """Every optax step counter (a NamedTuple field named ``count``) in the state."""
    leaves = jax.tree_util.tree_flatten_with_path(opt_state)[0]
    return [int(np.asarray(leaf).reshape(-1)[0]) for path, leaf in leaves
            if path and getattr(path[-1], "name", None) == "count"]


def test_authors_recipe_resets_the_optimizer_each_epoch_and_counts_keys_only(
        files, tmp_path, monkeypatch):
    from wormjax.pipeline import loop
    starts, counted_seen = [], []
    real_epoch, real_update = loop.train_epoch, search_lib.update

    def recording_epoch(step_fn, state, *args, **kwargs):
        starts.append(_optimizer_counts(state.opt_state))
        return real_epoch(step_fn, state, *args, **kwargs)

    def recording_update(state, representative, config, counted=None):
        counted_seen.append(None if counted is None else counted.shape)
        return real_update(state, representative, config, counted)

    monkeypatch.setattr(loop, "train_epoch", recording_epoch)
    monkeypatch.setattr(search_lib, "update", recording_update)
    config = tiny_config(files, **{"experiment.schedules": "none",
                                   "experiment.placements": "gradient",
                                   "optim.reset_each_epoch": True,
                                   "search.authors_qk_mask_bug": True,
                                   "search.record_magnitudes": True})
    experiment.run_experiment(config, str(tmp_path), print_fn=lambda s: None)
    run = json.load(open(os.path.join(str(tmp_path), "eb_seed0", "summary.json")))
    # A new optimizer at every epoch's start: every step counter is back at 0
    # (without the reset, search epoch 1 would start at steps_per_epoch).
    assert len(starts) >= 3 and all(c and set(c) == {0} for c in starts), starts
    # The search saw the key-only counting vector, one entry per Q/K element.
    layout = selectors_lib.attention_selector()(
        text_task.TextTask(config).init_variables(0)["params"])
    assert counted_seen and set(counted_seen) == {(layout.num_entries,)}
    # The run's distances are the key-only ones: a replay of its recorded
    # magnitudes with the authors' counting gives them, the paper's rule not.
    from wormjax import search_replay
    from wormjax.pipeline import magnitudes_log
    mags, counted = magnitudes_log.load(os.path.join(str(tmp_path), "eb_seed0"))
    srch = config.search
    rule = search_lib.EarlyBirdConfig(prune_ratio=srch.prune_ratio, window=srch.window,
                                      stop_distance=srch.stop_distance,
                                      trigger_margin=srch.trigger_margin)
    seen = [r["d_max"] for r in run["trajectory"] if r["phase"] == "search"]
    authors = search_replay.replay(mags, rule, counted).d_max
    paper = search_replay.replay(mags, rule).d_max
    assert len(seen) >= srch.window  # at least one full window
    full = slice(srch.window - 1, len(seen))
    np.testing.assert_allclose(seen[full], authors[full], rtol=1e-6)
    assert not np.allclose(seen[full], paper[full], rtol=1e-3)
