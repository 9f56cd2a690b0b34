"""The benchmark suite imports, and one bench runs end to end at micro size.

Structure only: no timing is asserted (the suite's figures are machine-dependent).
"""

import collections
import importlib
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is a package beside wormjax/
    sys.path.insert(0, str(REPO))

BENCH_MODULES = sorted(p.stem for p in (REPO / "benchmarks").glob("bench_*.py"))
OURS = ("bench_train_step", "bench_torch", "bench_worm_overhead", "bench_eb_update",
        "bench_input_pipeline", "bench_compile", "bench_roofline", "bench_conv_layers",
        "bench_xla_flags", "bench_conv_kernels", "bench_op_profile")


def test_every_bench_is_present():
    assert set(OURS) <= set(BENCH_MODULES)


@pytest.mark.parametrize("name", BENCH_MODULES)
def test_bench_module_imports(name):
    module = importlib.import_module(f"benchmarks.{name}")
    if name in OURS:
        assert callable(module.run) and callable(module.main)


def test_run_all_discovers_builtin_order():
    run_all = importlib.import_module("benchmarks.run_all")
    names = run_all.discover()
    assert names[0] == "train_step"
    assert [n for n in names if n in run_all.ORDER] == list(run_all.ORDER)


def test_summarize_and_table():
    common = importlib.import_module("benchmarks.common")
    timing = importlib.import_module("benchmarks.timing")
    output = importlib.import_module("benchmarks.output")
    stats = timing.summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (stats["n"], stats["median"], stats["q1"], stats["q3"]) == (5, 3.0, 2.0, 4.0)
    assert (stats["min"], stats["max"], stats["iqr"]) == (1.0, 5.0, 2.0)
    table = output.markdown_table([{"a": 1.23456, "b": None, "c": [1, 2]}, {"a": 12345.0}])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1.23 | - |", "| 12,345 | - |"]
    with pytest.raises(ValueError, match="size must be one of"):
        common.check_size("huge")


def test_eb_update_bench_runs_tiny():
    bench = importlib.import_module("benchmarks.bench_eb_update")
    res = bench.run("tiny")
    assert res["name"] == "eb_update"
    assert isinstance(res["notes"], list) and res["notes"]
    assert [r["representative"] for r in res["rows"]] == ["vgg11 w0.25 BN", "tiny BERT Q/K"]
    for row in res["rows"]:
        assert row["entries"] > 0 and row["update_ms"] > 0 and row["sort_mask_ms"] > 0
        assert row["masks_equal"] is True  # the library's mask is the sort-based one
        assert row["update_share_of_epoch_pct"] is None  # tiny measures no epoch
    assert res["rows"][0]["entries"] == 688  # 2,752 BN channels at width 0.25
    text = importlib.import_module("benchmarks.output").to_markdown(res)
    assert "| representative |" in text


def _conv_calls(model_name: str, width: float) -> collections.Counter:
    """(input map, cin, cout, kernel, stride) of every nn.Conv call of a wormjax CNN."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from wormjax import models

    calls = collections.Counter()

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
            x, conv = args[0], context.module
            strides = conv.strides if conv.strides is not None else 1
            stride = strides if isinstance(strides, int) else strides[0]
            calls[(x.shape[1], x.shape[-1], conv.features, conv.kernel_size[0],
                   stride)] += 1
        return next_fun(*args, **kwargs)

    model = models.create_cnn(model_name, num_classes=10, width=width)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                          jnp.zeros((1, 32, 32, 3)), train=False))
    return calls


@pytest.mark.parametrize("width", [1.0, 0.25])
def test_conv_kernel_shapes_are_the_models_convs(width):
    bench = importlib.import_module("benchmarks.bench_conv_kernels")
    for model_name, shapes in (("cifar_vgg11", bench.vgg11_shapes(width)),
                               ("cifar_resnet18", bench.resnet18_shapes(width))):
        listed = collections.Counter()
        for s in shapes:
            listed[(s.hw, s.cin, s.cout, s.kernel, s.stride)] += s.count
        assert listed == _conv_calls(model_name, width), model_name
    assert sum(s.count for s in bench.resnet18_shapes(width)) == 20


def test_conv_kernels_bench_runs_tiny():
    bench = importlib.import_module("benchmarks.bench_conv_kernels")
    res = bench.run("tiny")
    assert res["name"] == "conv_kernels"
    assert len(res["rows"]) == 8 + 11  # VGG-11's convs + ResNet-18's distinct shapes
    for row in res["rows"]:
        passes = ("fwd", "dw") if row["cin"] == 3 else ("fwd", "dx", "dw")
        assert {f"xla_{p}_ms" for p in passes} <= set(row)
        assert ("xla_dx_ms" in row) == (row["cin"] != 3)
        if bench.TORCH_AVAILABLE:  # both sides computed the same numbers
            assert row["max_rel_diff"] < 1e-4, row
            assert all(row[f"ratio_{p}"] > 0 for p in passes)
    # A busy machine adds a CONTENDED note, so find the conv-time note by its
    # content, never by its position.
    # One per model of each grid entry (main asserted a single one, which the bench
    # never wrote: VGG-11 and ResNet-18 each get theirs).
    conv_notes = [n for n in res["notes"] if "conv time of one step" in n]
    assert [n.split()[0] for n in conv_notes] == (
        ["vgg11", "resnet18"] * len(bench.grid("tiny"))), res["notes"]


def test_op_profile_bench_runs_tiny():
    bench = importlib.import_module("benchmarks.bench_op_profile")
    assert bench.op_kind("ynn_fusion.12") == "ynn_fusion"
    assert bench.op_kind("transpose_copy_fusion") == "transpose_copy_fusion"
    res = bench.run("tiny")
    rows = res["rows"]
    total = rows[-1]
    assert total["op_kind"] == "ALL OPERATIONS" and total["wall_step_ms"] > 0
    kinds = rows[:-1]
    assert kinds and all(r["ms_per_step"] > 0 for r in kinds)
    assert sum(r["ms_per_step"] for r in kinds) == pytest.approx(total["ms_per_step"])
    assert [r["ms_per_step"] for r in kinds if "other" not in r["op_kind"]] == sorted(
        (r["ms_per_step"] for r in kinds if "other" not in r["op_kind"]), reverse=True)
    assert not any(bench._NOT_OPS.search(r["op_kind"]) for r in kinds)


def test_the_bare_arm_is_the_library_chain_without_worm():
    """The WORM-overhead A/B differs in WORM only: same schedule, decay and clipping."""
    import jax
    import jax.numpy as jnp
    import optax

    from wormjax import selectors
    from wormjax.pipeline import state as state_lib

    wl = importlib.import_module("benchmarks.workloads")
    optim = wl.bert_optim()
    params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}
    selector = selectors.path_selector("kernel")
    worm = state_lib.make_optimizer(optim, selector, total_steps=1000)
    bare = state_lib.make_optimizer(optim, selector, total_steps=1000,
                                    with_truncation=False)
    # The chain's first state is the truncation's; the rest is the bare chain.
    assert (jax.tree_util.tree_structure(worm.init(params)[1:])
            == jax.tree_util.tree_structure(bare.init(params)))
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    state = bare.init(params)
    sizes = []
    for _ in range(3):  # the warm-up schedule: step sizes grow from 0
        updates, state = bare.update(grads, state, params)
        sizes.append(float(optax.global_norm(updates)))
    assert sizes[0] < sizes[1] < sizes[2]


def test_scaling_worker_times_the_workloads_step():
    """bench scaling times the one workload builder's step, placed on a mesh."""
    bench = importlib.import_module("benchmarks.bench_scaling")
    wl = importlib.import_module("benchmarks.workloads")
    built = []
    real_build = wl.build

    def recording_build(spec, **kwargs):
        built.append(real_build(spec, **kwargs))
        return built[-1]

    wl.build = recording_build
    try:
        res = bench._worker(1, "cifar_vgg11", 0.0625, 8, "tiny")
    finally:
        wl.build = real_build
    assert res["devices"] == 1 and res["batch"] == 8 and res["step_ms"]["median"] > 0
    (work,) = built
    assert work.spec == wl.CnnSpec("vgg11", 0.0625, 8)
    assert work.counter.counts == {"train_step": 1}  # one compile for every window
    from jax.sharding import PartitionSpec

    assert work.batches[0]["image"].sharding.spec == PartitionSpec("data")
