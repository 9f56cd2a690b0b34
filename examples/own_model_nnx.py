# examples/own_model_nnx.py: the Early-Bird ticket of your own Flax NNX CNN.
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

import wormjax


class Block(nnx.Module):  # a residual block with a projection shortcut
    def __init__(self, cin, cout, rngs):
        self.conv1 = nnx.Conv(cin, cout, (3, 3), use_bias=False, rngs=rngs)
        self.norm1 = nnx.BatchNorm(cout, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), use_bias=False, rngs=rngs)
        self.norm2 = nnx.BatchNorm(cout, rngs=rngs)
        self.conv_proj = nnx.Conv(cin, cout, (1, 1), use_bias=False, rngs=rngs)
        self.norm_proj = nnx.BatchNorm(cout, rngs=rngs)

    def __call__(self, x):
        y = self.norm2(self.conv2(nnx.relu(self.norm1(self.conv1(x)))))
        return nnx.relu(self.norm_proj(self.conv_proj(x)) + y)


class Net(nnx.Module):
    def __init__(self, rngs):
        self.stem = nnx.Conv(1, 16, (3, 3), use_bias=False, rngs=rngs)
        self.stem_norm = nnx.BatchNorm(16, rngs=rngs)
        self.block = Block(16, 32, rngs)
        self.head = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.max_pool(nnx.relu(self.stem_norm(self.stem(x))), (2, 2), (2, 2))
        return self.head(self.block(x).mean(axis=(1, 2)))


digits = load_digits()  # 1,797 real 8x8 handwritten digits, bundled with scikit-learn
images = jnp.asarray(digits.images[..., None] / 16.0, jnp.float32)
labels = jnp.asarray(digits.target)
x_train, y_train, x_test, y_test = images[:1500], labels[:1500], images[1500:], labels[1500:]

model = Net(nnx.Rngs(0))
# Bound to the module, the selector finds every nnx.BatchNorm by structure (scale
# next to BatchStat mean/var); it then reads the pure gradient trees that
# nnx.Optimizer hands to optax.
selector = wormjax.batchnorm_selector().bind(model)
layout = selector(model)
search = wormjax.early_bird(prune_ratio=0.5, window=5, stop_distance=0.1,
                            trigger_margin=0.05, truncation_ratio=3e-3, schedule="worm")
eb_state = search.init(layout.num_entries)
optimizer = nnx.Optimizer(
    model, optax.chain(wormjax.worm_truncation(selector), optax.sgd(0.1, momentum=0.9)),
    wrt=nnx.Param)


@nnx.jit
def train_step(model, optimizer, eb_state, x, y):
    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
    grads = nnx.grad(loss_fn)(model)
    optimizer.update(model, grads, eb_state=eb_state)  # extra kwargs reach the tx


rng = np.random.default_rng(0)
model.train()
for epoch in range(30):
    eb_state = search.update(eb_state, layout.representative(model))  # epoch start
    if eb_state.converged:
        break
    order = rng.permutation(len(x_train))
    for i in range(0, len(order) - 127, 128):
        batch = order[i:i + 128]
        train_step(model, optimizer, eb_state, x_train[batch], y_train[batch])

model.eval()
accuracy = float((model(x_test).argmax(-1) == y_test).mean())
ticket = layout.split(eb_state.newest_mask)  # {path: bool mask}, True = keep
print(f"ticket found: {bool(eb_state.converged)} at search epoch "
      f"{int(eb_state.ticket_epoch)}, test accuracy {accuracy:.3f}")
for path, keep in ticket.items():
    print(f"  {path}: {int(keep.sum())} of {keep.size} channels kept")
