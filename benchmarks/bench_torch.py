"""The same train steps in PyTorch, timed interleaved with wormjax's in one process.

Equivalent CIFAR VGG-11 / ResNet-18 are written here (bias-free 3x3 convs + BN + ReLU,
max pools, global mean + Linear; 3x3 stem, BasicBlocks, 1x1 conv + BN shortcuts),
checked to have exactly wormjax's parameter count; BERT is
``transformers.BertForSequenceClassification`` built from the same config. Same batch,
SGD(0.01, momentum 0.9) for the CNNs, AdamW(2e-5, wd 0.01) for BERT, uint8 NHWC images
normalised inside the step like wormjax's. CNNs run in both memory formats; the better
one is reported. WORM truncation, when asked for, is done the authors' way: after
``loss.backward()``, a Python loop over the modules multiplying BN ``weight.grad`` and
``bias.grad`` (BERT: query/key ``weight.grad``) by a mask tensor.

  python -m benchmarks.bench_torch --size small
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable

import jax
import numpy as np

from benchmarks import common
from benchmarks import workloads as wl
from wormjax.models import vgg as vgg_lib

NAME = "torch"
TORCH_AVAILABLE = importlib.util.find_spec("torch") is not None
TRANSFORMERS_AVAILABLE = importlib.util.find_spec("transformers") is not None

if TORCH_AVAILABLE:
    import torch
    from torch import nn
    from torch.nn import functional as F


def _scaled(channels: int, width: float) -> int:
    # wormjax's width rule (models/common.scaled_width), so both sides build one shape.
    return max(1, int(round(channels * width)))


def _torch_models():
    """The CNN classes; defined lazily so that this module imports without torch."""

    class CifarVGG11(nn.Module):
        """Early-Bird's CIFAR VGG-11: conv3x3 (no bias) + BN + ReLU, max pools, mean, Linear."""

        def __init__(self, width: float, num_classes: int = 10):
            super().__init__()
            layers, cin = [], 3
            for v in vgg_lib.CIFAR_VGG11_CFG:
                if v == "M":
                    layers.append(nn.MaxPool2d(2))
                    continue
                c = _scaled(v, width)
                layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                           nn.ReLU(inplace=True)]
                cin = c
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            return self.fc(self.features(x).mean(dim=(2, 3)))

    class BasicBlock(nn.Module):
        """Two 3x3 conv + BN, identity or 1x1 conv + BN shortcut."""

        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                              nn.BatchNorm2d(cout))

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))

    class CifarResNet18(nn.Module):
        """CIFAR ResNet-18: 3x3 stem, no max pool, BasicBlocks [2, 2, 2, 2], mean, Linear."""

        def __init__(self, width: float, num_classes: int = 10):
            super().__init__()
            cin = _scaled(64, width)
            self.conv1 = nn.Conv2d(3, cin, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cin)
            blocks = []
            for base, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                cout = _scaled(base, width)
                blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
                cin = cout
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            x = self.blocks(F.relu(self.bn1(self.conv1(x))))
            return self.fc(x.mean(dim=(2, 3)))

    return {"vgg11": CifarVGG11, "resnet18": CifarResNet18}


def thread_options(env: dict) -> list[int]:
    """Torch intra-op thread counts to try: every usable core, as XLA uses.

    On a contended machine one thread is tried too: OpenMP workers spin at their
    barriers, and when a neighbour's process holds a core the spinning partner
    waits for its whole time slice, which can make two threads 10x slower than one.
    """
    cores = env["usable_cores"]
    contended = env["load_average"][0] > 0.75 * cores
    return [cores, 1] if cores > 1 and contended else [cores]


class TorchStep:
    """One PyTorch train step (optionally with the authors' truncation loop)."""

    def __init__(self, spec, channels_last: bool = False, threads: int | None = None,
                 seed: int = 0):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        self.spec, self.channels_last = spec, channels_last
        self.threads = threads or common.usable_cores()
        if isinstance(spec, wl.CnnSpec):
            self.model = _torch_models()[spec.model](spec.width)
            if channels_last:
                self.model = self.model.to(memory_format=torch.channels_last)
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
            self.batches = [(torch.from_numpy(rng.integers(0, 256, (spec.batch, 32, 32, 3),
                                                           np.uint8)),
                             torch.from_numpy(rng.integers(0, 10, (spec.batch,), np.int64)))
                            for _ in range(2)]
            self.items_per_step = spec.batch
            targets = [m for m in self.model.modules() if isinstance(m, nn.BatchNorm2d)]
            shapes = [m.weight.shape for m in targets]
        else:
            import transformers  # noqa: PLC0415 - optional and slow to import

            config, _ = wl.bert_config(spec.model)
            hf_config = transformers.BertConfig(
                vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                num_hidden_layers=config.num_hidden_layers,
                num_attention_heads=config.num_attention_heads,
                intermediate_size=config.intermediate_size, hidden_act=config.hidden_act,
                max_position_embeddings=config.max_position_embeddings,
                type_vocab_size=config.type_vocab_size, num_labels=2)
            self.model = transformers.BertForSequenceClassification(hf_config)
            self.attn_implementation = getattr(self.model.config, "_attn_implementation", None)
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=2e-5,
                                               weight_decay=0.01)
            shape = (spec.batch, spec.seq_len)
            self.batches = [
                ({"input_ids": torch.from_numpy(rng.integers(1000, config.vocab_size, shape)),
                  "attention_mask": torch.ones(shape, dtype=torch.long),
                  "token_type_ids": torch.zeros(shape, dtype=torch.long)},
                 torch.from_numpy(rng.integers(0, 2, (spec.batch,), np.int64)))
                for _ in range(2)]
            self.items_per_step = spec.batch * spec.seq_len
            targets = [m for name, m in self.model.named_modules()
                       if name.endswith(("attention.self.query", "attention.self.key"))]
            shapes = [m.weight.shape for m in targets]
        self.model.train()
        # Multipliers r on a random half of the entries, 1 elsewhere, as a mask tensor
        # per module (what the authors' code keeps between epochs).
        self.multipliers = [torch.where(torch.rand(s) < 0.5, wl.TRUNCATION_RATIO, 1.0)
                            for s in shapes]
        self.correct = torch.zeros((), dtype=torch.long)
        self._i = 0

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def _truncate(self) -> None:
        # The authors' way: walk the modules every step, isinstance-check, scale grads.
        k = 0
        if isinstance(self.spec, wl.CnnSpec):
            for m in self.model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.grad.data.mul_(self.multipliers[k])
                    m.bias.grad.data.mul_(self.multipliers[k])
                    k += 1
        else:
            for name, m in self.model.named_modules():
                if name.endswith(("attention.self.query", "attention.self.key")):
                    m.weight.grad.data.mul_(self.multipliers[k])
                    k += 1

    def _forward(self, inputs):
        if isinstance(self.spec, wl.CnnSpec):
            # NHWC uint8 -> NCHW view: its strides already are channels-last.
            x = inputs.permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5).div_(0.5)
            if not self.channels_last:
                x = x.contiguous()
            return self.model(x)
        return self.model(**inputs).logits

    def steps(self, num_steps: int, truncate: bool = False) -> None:
        """Runs ``num_steps`` steps (eager CPU execution: done when this returns)."""
        torch.set_num_threads(self.threads)  # the setting is global; arms differ
        for _ in range(num_steps):
            inputs, labels = self.batches[self._i % len(self.batches)]
            self._i += 1
            self.optimizer.zero_grad(set_to_none=True)
            logits = self._forward(inputs)
            loss = F.cross_entropy(logits, labels)
            loss.backward()
            if truncate:
                self._truncate()
            self.optimizer.step()
            with torch.no_grad():  # wormjax's step also accumulates accuracy
                self.correct += (logits.argmax(1) == labels).sum()


def specs(size: str) -> list:
    """The workloads paired at each size."""
    common.check_size(size)
    if size == "tiny":
        return [wl.CnnSpec("vgg11", 0.0625, 8)]
    if size == "small":
        return [wl.CnnSpec("vgg11", 0.25, 32), wl.CnnSpec("resnet18", 0.25, 32),
                wl.BertSpec("minilm", 32, 32)]
    cnn = [wl.CnnSpec(m, w, b) for m in ("vgg11", "resnet18") for w in (1.0, 0.25)
           for b in (32, 128)]
    return cnn + [wl.BertSpec(m, 32, s) for m in ("minilm", "bert_base") for s in (32, 128)]


def _window(step_fn, target: float) -> tuple[int, Callable[[], None]]:
    """A timed window of about ``target`` seconds for a steps(n) function."""
    first = common.timed(lambda: step_fn(1))
    n = common.steps_for_window(first, target)
    return n, lambda: step_fn(n)


def torch_arms(spec, threads: list[int]) -> dict[str, TorchStep]:
    """Every torch variant to try: memory formats (CNNs) x thread counts."""
    layouts = ({"nchw": False, "channels_last": True} if isinstance(spec, wl.CnnSpec)
               else {"": False})
    arms = {}
    for t in threads:
        for name, channels_last in layouts.items():
            label = "_".join(x for x in ("torch", name, f"t{t}") if x)
            arms[label] = TorchStep(spec, channels_last=channels_last, threads=t)
    return arms


def fastest(spec, threads: list[int], probe_steps: int = 3) -> TorchStep:
    """The torch variant with the shortest step after a short probe."""
    arms = list(torch_arms(spec, threads).values())
    for arm in arms:
        arm.steps(1)
    return min(arms, key=lambda arm: common.timed(lambda: arm.steps(probe_steps)))


def compare(spec, size: str, threads: list[int]) -> dict:
    """Interleaves wormjax and PyTorch windows for one workload; one result row."""
    target, reps = wl.WINDOWS[size]
    work = wl.build(spec)
    work.compile()
    arms = {"wormjax": work.steps}
    torch_steps = torch_arms(spec, threads)
    arms.update({k: v.steps for k, v in torch_steps.items()})
    windows = {k: _window(fn, target) for k, fn in arms.items()}
    names = list(windows)
    times = common.interleave([windows[k][1] for k in names], reps, warmup=1)
    per_step = {k: [t / windows[k][0] for t in ts] for k, ts in zip(names, times)}
    medians = {k: common.summarize(v)["median"] for k, v in per_step.items()}
    best = min((k for k in names if k != "wormjax"), key=medians.get)
    ratio = common.ratio_stats(per_step[best], per_step["wormjax"])
    unit = work.unit
    any_torch = next(iter(torch_steps.values()))
    jax_params = sum(int(np.prod(x.shape)) for x in
                     jax.tree_util.tree_leaves(work.state.params))
    row = {"workload": spec.key, "reps": reps}
    row["wormjax_step_ms"] = 1e3 * medians["wormjax"]
    row["torch_step_ms"] = 1e3 * medians[best]
    row["torch_variants_step_ms"] = {k: 1e3 * medians[k] for k in names if k != "wormjax"}
    row.update({
        f"wormjax_{unit}_per_s": work.items_per_step / medians["wormjax"],
        f"torch_{unit}_per_s": any_torch.items_per_step / medians[best],
        "torch_best": best,
        "ratio_wormjax_over_torch": ratio["median"],
        "ratio_q1": ratio["q1"], "ratio_q3": ratio["q3"],
        "params_equal": jax_params == any_torch.num_params(),
        "per_step_s": per_step,
    })
    if hasattr(any_torch, "attn_implementation"):
        row["torch_attention"] = any_torch.attn_implementation
    return row


COLUMNS = ("workload", "wormjax_step_ms", "torch_step_ms", "torch_best", "wormjax_images_per_s", "torch_images_per_s",
           "wormjax_tokens_per_s", "torch_tokens_per_s", "ratio_wormjax_over_torch",
           "ratio_q1", "ratio_q3", "params_equal", "reps")


def run(size: str = "small") -> dict:
    """Pairs wormjax and PyTorch steps for every workload of ``size``.

    Args:
      size: "tiny", "small" or "large".

    Returns:
      {"name", "rows", "notes", "environment"}; rows empty when torch is missing.
    """
    env = common.environment()
    if not TORCH_AVAILABLE:
        return common.result(NAME, [], ["SKIPPED: torch is not installed "
                                         "(pip install 'wormjax[torch]')."], env)
    threads = thread_options(env)
    notes = [f"torch {torch.__version__}; intra-op threads tried: {threads} "
             f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}); "
             "XLA uses its own pool over all usable cores."]
    rows = []
    for spec in specs(size):
        if isinstance(spec, wl.BertSpec) and not TRANSFORMERS_AVAILABLE:
            notes.append(f"{spec.key}: SKIPPED, transformers is not installed.")
            continue
        rows.append(compare(spec, size, threads))
    notes += [
        "ratio = torch step time / wormjax step time per interleaved round (> 1: wormjax "
        "faster), median and quartiles over rounds, against the fastest torch variant "
        "('torch_best': memory format nchw / channels_last, tN = N threads; every "
        "variant's median is in the JSON). Both sides: truncation off (see "
        "worm_overhead for it on).",
        "params_equal: the torch model has exactly as many trainable parameters as "
        "wormjax's (a check that the architectures match).",
        "BERT on torch: transformers' BertForSequenceClassification with random weights "
        "(speed does not depend on the values), dropout on, default attention kernel "
        "(column torch_attention in the JSON).",
    ]
    return common.result(NAME, rows, notes, env, columns=list(COLUMNS))


def main() -> None:
    common.cli(run, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
