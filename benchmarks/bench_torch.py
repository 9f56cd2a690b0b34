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
import sys
from typing import Callable

import jax
import numpy as np

from benchmarks import common
from benchmarks import machine
from benchmarks import output
from benchmarks import timing
from benchmarks import workloads as wl
from wormjax.models import common as model_common
from wormjax.models import vgg as vgg_lib

NAME = "torch"
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false"
_CHILD_FLAG = "--single-thread-child"
TORCH_AVAILABLE = importlib.util.find_spec("torch") is not None
TRANSFORMERS_AVAILABLE = importlib.util.find_spec("transformers") is not None

if TORCH_AVAILABLE:
    import torch
    from torch import nn
    from torch.nn import functional as F


def _to(inputs, device: str):
    """A batch's inputs (a tensor or a dict of tensors) on ``device``."""
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)


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
                c = model_common.scaled_width(v, width)
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
            cin = model_common.scaled_width(64, width)
            self.conv1 = nn.Conv2d(3, cin, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cin)
            blocks = []
            for base, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                cout = model_common.scaled_width(base, width)
                blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
                cin = cout
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            x = self.blocks(F.relu(self.bn1(self.conv1(x))))
            return self.fc(x.mean(dim=(2, 3)))

    return {"vgg11": CifarVGG11, "resnet18": CifarResNet18}


def thread_options(env: dict) -> list[int]:
    """Torch intra-op thread counts worth trying: every usable core, as XLA uses.

    On a contended machine one thread is tried too: OpenMP workers spin at their
    barriers, and when a neighbour's process holds a core the spinning partner
    waits for its whole time slice, which can make two threads 10x slower than one.
    """
    cores = env["usable_cores"]
    return [cores, 1] if cores > 1 and machine.is_contended(env) else [cores]


def torch_device() -> str | None:
    """Where torch runs to match JAX's device: "cpu", "cuda", or None if it cannot."""
    backend = jax.default_backend()
    if backend == "cpu":
        return "cpu"
    if backend == "gpu" and torch.cuda.is_available():
        # XLA's default float32 matmul precision on GPU allows TF32; match it.
        torch.set_float32_matmul_precision("high")
        return "cuda"
    return None


class TorchStep:
    """One PyTorch train step (optionally with the authors' truncation loop)."""

    def __init__(self, spec, channels_last: bool = False, threads: int | None = None,
                 seed: int = 0):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        self.spec, self.channels_last = spec, channels_last
        self.threads = threads or machine.usable_cores()
        self.device = torch_device() or "cpu"
        if isinstance(spec, wl.CnnSpec):
            self.model = _torch_models()[spec.model](spec.width).to(self.device)
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
            self.model = transformers.BertForSequenceClassification(hf_config).to(self.device)
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
        self.batches = [(_to(inputs, self.device), labels.to(self.device))
                        for inputs, labels in self.batches]
        # Multipliers r on a random half of the entries, 1 elsewhere, as a mask tensor
        # per module (what the authors' code keeps between epochs).
        self.multipliers = [torch.where(torch.rand(s) < 0.5, wl.TRUNCATION_RATIO, 1.0)
                            .to(self.device) for s in shapes]
        self.correct = torch.zeros((), dtype=torch.long, device=self.device)
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
        """Runs ``num_steps`` steps and waits for the device (one sync per call)."""
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
        if self.device == "cuda":
            torch.cuda.synchronize()


def specs(size: str) -> list:
    """The workloads paired at each size."""
    common.check_size(size)
    if size == "tiny":
        return [wl.TINY]
    if size == "small":
        return [wl.CnnSpec("vgg11", 0.25, 32), wl.CnnSpec("resnet18", 0.25, 32),
                wl.BertSpec("minilm", 32, 32)]
    cnn = [wl.CnnSpec(m, w, b) for m in ("vgg11", "resnet18") for w in (1.0, 0.25)
           for b in (32, 128)]
    return cnn + [wl.BertSpec(m, 32, s) for m in ("minilm", "bert_base") for s in (32, 128)]


def _window(step_fn, target: float) -> tuple[int, Callable[[], None]]:
    """A timed window of about ``target`` seconds for a steps(n) function."""
    first = timing.timed(lambda: step_fn(1))
    n = timing.steps_for_window(first, target)
    return n, lambda: step_fn(n)


def torch_arms_names(spec, threads: list[int]) -> dict[str, tuple[bool, int]]:
    """Variant label -> (channels_last, threads), in ``torch_arms``'s naming."""
    layouts = ({"nchw": False, "channels_last": True} if isinstance(spec, wl.CnnSpec)
               else {"": False})
    return {"_".join(x for x in ("torch", name, f"t{t}") if x): (cl, t)
            for t in threads for name, cl in layouts.items()}


def torch_arms(spec, threads: list[int]) -> dict[str, TorchStep]:
    """Every torch variant to try: memory formats (CNNs) x thread counts."""
    return {label: TorchStep(spec, channels_last=cl, threads=t)
            for label, (cl, t) in torch_arms_names(spec, threads).items()}


def probe(spec, threads: list[int], probe_steps: int = 2) -> tuple[str, TorchStep, dict]:
    """Every torch variant after a one-step warm-up, timed over ``probe_steps`` steps.

    Returns:
      (the fastest variant's name, that variant, {name: probe seconds per step}).
    """
    arms = torch_arms(spec, threads)
    seconds = {}
    for name, arm in arms.items():
        arm.steps(1)
        if len(arms) > 1:  # nothing to choose between otherwise
            seconds[name] = timing.timed(lambda: arm.steps(probe_steps)) / probe_steps
        else:
            seconds[name] = None  # JSON null, not NaN
    best = min(seconds, key=lambda k: (seconds[k], k)) if len(arms) > 1 else next(iter(arms))
    return best, arms[best], seconds


def fastest(spec, threads: list[int]) -> TorchStep:
    """The torch variant with the shortest step after a short probe."""
    return probe(spec, threads)[1]


def compare(spec, size: str, threads: list[int]) -> dict:
    """Interleaves wormjax and the fastest PyTorch variant for one workload; one row."""
    target, reps = wl.WINDOWS[size]
    work = wl.build(spec)
    work.compile()
    best, step, probed = probe(spec, threads)
    n_jax, jax_window = _window(work.steps, target)
    n_torch, torch_window = _window(step.steps, target)
    warmup = 1
    if min(n_jax, n_torch) == 2:
        # A slow step on either side: both are warm already, and a few rounds pin it.
        warmup, reps = 0, min(reps, 3)
    t_jax, t_torch = timing.interleave([jax_window, torch_window], reps, warmup=warmup)
    per_jax = [t / n_jax for t in t_jax]
    per_torch = [t / n_torch for t in t_torch]
    ratio = timing.ratio_stats(per_torch, per_jax)
    jax_s, torch_s = timing.summarize(per_jax)["median"], timing.summarize(per_torch)["median"]
    jax_params = sum(int(np.prod(x.shape)) for x in
                     jax.tree_util.tree_leaves(work.state.params))
    unit = work.unit
    row = {
        "workload": spec.key, "reps": reps,
        "wormjax_step_ms": 1e3 * jax_s, "torch_step_ms": 1e3 * torch_s,
        "torch_best": best,
        "torch_probe_step_ms": {k: None if v is None else 1e3 * v
                                for k, v in probed.items()},
        f"wormjax_{unit}_per_s": work.items_per_step / jax_s,
        f"torch_{unit}_per_s": step.items_per_step / torch_s,
        "ratio_wormjax_over_torch": ratio["median"],
        "ratio_q1": ratio["q1"], "ratio_q3": ratio["q3"],
        "params_equal": jax_params == step.num_params(),
        "per_step_s": {"wormjax": per_jax, "torch": per_torch},
    }
    if hasattr(step, "attn_implementation"):
        row["torch_attention"] = step.attn_implementation
    return row


COLUMNS = ("workload", "threads", "wormjax_step_ms", "torch_step_ms", "torch_best",
           "wormjax_images_per_s", "torch_images_per_s",
           "wormjax_tokens_per_s", "torch_tokens_per_s", "ratio_wormjax_over_torch",
           "ratio_q1", "ratio_q3", "params_equal", "reps")


def _rows(size: str, threads: int, notes: list[str]) -> list[dict]:
    """One paired row per workload, torch at ``threads`` intra-op threads."""
    rows = []
    for spec in specs(size):
        if isinstance(spec, wl.BertSpec) and not TRANSFORMERS_AVAILABLE:
            notes.append(f"{spec.key}: SKIPPED, transformers is not installed.")
            continue
        rows.append(compare(spec, size, [threads]))
    return rows


def run(size: str = "small") -> dict:
    """Pairs wormjax and PyTorch steps for every workload of ``size``.

    Both frameworks use every usable core. On a multi-core CPU the pairs are
    repeated in a child process with both single-threaded (XLA with
    ``--xla_cpu_multi_thread_eigen=false``, torch with 1 thread): the per-core
    speed of the two, apart from how well each one's thread pool scales (and how
    badly a spin-waiting pool suffers when a neighbour holds a core).

    Args:
      size: "tiny", "small" or "large".

    Returns:
      {"name", "rows", "notes", "environment"}; rows empty when torch is missing.
    """
    env = machine.environment()
    if not TORCH_AVAILABLE:
        return output.result(NAME, [], ["SKIPPED: torch is not installed "
                                         "(pip install 'wormjax[torch]')."], env)
    if torch_device() is None:
        return output.result(NAME, [], [f"SKIPPED: JAX runs on {jax.default_backend()} "
                                         "and this torch build cannot use that device."], env)
    cores = env["usable_cores"]
    notes = [f"torch {torch.__version__} on {torch_device()}, OMP_WAIT_POLICY="
             f"{os.environ.get('OMP_WAIT_POLICY', 'default')}"
             + ("; float32 matmuls may use TF32 on both sides (XLA's default; torch "
                "set_float32_matmul_precision('high'))." if torch_device() == "cuda"
                else ".")]
    rows = _rows(size, cores, notes)
    for row in rows:
        row["threads"] = f"{cores} (both)"
    if cores > 1 and jax.default_backend() == "cpu":
        flags = (os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD_XLA).strip()
        single = common.run_child("benchmarks.bench_torch", [_CHILD_FLAG, size],
                                  env={"XLA_FLAGS": flags})
        for row in single:
            row["threads"] = "1 (both)"
        rows += single
        notes.append(f"Rows '1 (both)': a child process with XLA_FLAGS='{flags}' and "
                     "torch at 1 thread (per-core speed, thread scaling aside).")
    notes += [
        "torch memory formats nchw / channels_last are each probed for 2 steps after a "
        "warm-up step (probe times in the JSON); the faster ('torch_best') is then "
        "interleaved with wormjax, window against window.",
        "ratio = torch step time / wormjax step time per interleaved round (> 1: wormjax "
        "faster), median and quartiles over rounds. Both sides: truncation off (see "
        "worm_overhead for it on).",
        "params_equal: the torch model has exactly as many trainable parameters as "
        "wormjax's (a check that the architectures match).",
        "BERT on torch: transformers' BertForSequenceClassification with random weights "
        "(speed does not depend on the values), dropout on, default attention kernel "
        "(column torch_attention in the JSON).",
    ]
    return output.result(NAME, rows, notes, env, columns=list(COLUMNS))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == _CHILD_FLAG:
        output.child_output(_rows(sys.argv[2], 1, []))
        return
    common.cli(run, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
