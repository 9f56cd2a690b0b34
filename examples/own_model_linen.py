# examples/own_model_linen.py: the Early-Bird ticket of your own linen CNN.
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import wormjax


class Block(nn.Module):  # flax-examples style: BatchNorms from a partial, any names
    features: int

    @nn.compact
    def __call__(self, x, train):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train)
        y = nn.relu(norm()(nn.Conv(self.features, (3, 3), use_bias=False)(x)))
        y = norm()(nn.Conv(self.features, (3, 3), use_bias=False)(y))
        shortcut = nn.Conv(self.features, (1, 1), use_bias=False, name="conv_proj")(x)
        return nn.relu(norm(name="norm_proj")(shortcut) + y)


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        x = nn.Conv(16, (3, 3), use_bias=False, name="stem")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="stem_norm")(x))
        x = Block(32, name="block")(nn.max_pool(x, (2, 2), (2, 2)), train)
        return nn.Dense(10)(x.mean(axis=(1, 2)))


digits = load_digits()  # 1,797 real 8x8 handwritten digits, bundled with scikit-learn
images = jnp.asarray(digits.images[..., None] / 16.0, jnp.float32)
labels = jnp.asarray(digits.target)
x_train, y_train, x_test, y_test = images[:1500], labels[:1500], images[1500:], labels[1500:]

model = Net()
variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0),
                                                                 x_train[:1])
params, batch_stats = variables["params"], variables["batch_stats"]

# Bound to the full variables, the selector finds every BatchNorm by structure
# (scale next to running mean/var) and then reads params and gradients alike.
selector = wormjax.batchnorm_selector().bind(variables)
layout = selector(params)
search = wormjax.early_bird(prune_ratio=0.5, window=5, stop_distance=0.1,
                            trigger_margin=0.05, truncation_ratio=3e-3, schedule="worm")
eb_state = search.init(layout.num_entries)
tx = optax.chain(wormjax.worm_truncation(selector), optax.sgd(0.1, momentum=0.9))
opt_state = tx.init(params)


@jax.jit
def train_step(params, batch_stats, opt_state, eb_state, x, y):
    def loss_fn(p):
        logits, upd = model.apply({"params": p, "batch_stats": batch_stats}, x,
                                  train=True, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, upd["batch_stats"]
    (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params, eb_state=eb_state)
    return optax.apply_updates(params, updates), batch_stats, opt_state


rng = np.random.default_rng(0)
for epoch in range(30):
    eb_state = search.update(eb_state, layout.representative(params))  # epoch start
    if eb_state.converged:
        break
    order = rng.permutation(len(x_train))
    for i in range(0, len(order) - 127, 128):
        batch = order[i:i + 128]
        params, batch_stats, opt_state = train_step(
            params, batch_stats, opt_state, eb_state, x_train[batch], y_train[batch])

logits = model.apply({"params": params, "batch_stats": batch_stats}, x_test, train=False)
accuracy = float((logits.argmax(-1) == y_test).mean())
ticket = layout.split(eb_state.newest_mask)  # {path: bool mask}, True = keep
print(f"ticket found: {bool(eb_state.converged)} at search epoch "
      f"{int(eb_state.ticket_epoch)}, test accuracy {accuracy:.3f}")
for path, keep in ticket.items():
    print(f"  {path}: {int(keep.sum())} of {keep.size} channels kept")
