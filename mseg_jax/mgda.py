"""MGDA (Sener & Koltun, NeurIPS 2018): the min-norm convex combination of per-task gradients.

Each dataset's loss is a task. The step direction is sum_t w_t g_t, where w on the simplex
minimizes |sum_t w_t g_t|^2: the min-norm point of the convex hull of the task gradients g_t.
The solver sees only the T x T Gram matrix of the gradients, so it is a small jitted loop.

As mseg-semantic `multiobjective_opt/min_norm_solvers.py` (branch training), `MinNormSolver`:
`find_min_norm_element_FW` starts from the best pair of tasks (`_min_norm_2d`, the analytic
2-task solution `_min_norm_element_from2`, clamped to 0.999 / 0.001 at the ends) and runs
Frank-Wolfe with that same analytic line search, at most MAX_ITER steps, until the weights move
less than STOP_CRIT (L1); it returns the weights before that last small move. With two tasks
the pair solution is the answer. `gradient_normalizers` scales each task's gradient for the
solver only; the step combines the unscaled gradients. (mseg's `dist_mgda_utils` calls the
projected-gradient `find_min_norm_element` of `min_norm_solvers_new.py` instead, from uniform
weights and without an iteration cap: the same min-norm problem, solved another way.)
"""

import jax
import jax.numpy as jnp

MAX_ITER = 250
STOP_CRIT = 1e-5
NORMALIZATIONS = ("none", "l2", "loss", "loss+")  # mseg's dist_mgda_utils uses "none"


def min_norm_pair(v1v1: jax.Array, v1v2: jax.Array, v2v2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """argmin_c |c x1 + (1 - c) x2|^2 from <x1,x1>, <x1,x2>, <x2,x2>: (c, the squared norm there).

  As the official solver: c = 0.999 when x1 is the closest point of the segment, 0.001 when
  x2 is (and the cost of that end). Broadcasts over its arguments.
  """
  at_x1, at_x2 = v1v2 >= v1v1, v1v2 >= v2v2
  denominator = v1v1 + v2v2 - 2 * v1v2  # > 0 on the interior branch
  c = (v2v2 - v1v2) / jnp.where(at_x1 | at_x2, 1.0, denominator)
  gamma = jnp.where(at_x1, 0.999, jnp.where(at_x2, 0.001, c))
  cost = jnp.where(at_x1, v1v1, jnp.where(at_x2, v2v2, v2v2 + c * (v1v2 - v2v2)))
  return gamma, cost


def min_norm_weights(gram: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Weights on the simplex of the min-norm point of the tasks' convex hull (Frank-Wolfe).

  Args:
    gram: (T, T) inner products of the task gradients.
    valid: (T,) bool, the tasks to combine (default all); the others get weight 0. One valid
      task gets weight 1; none gives all zeros.

  Returns:
    (T,) float32 weights.
  """
  gram = jnp.asarray(gram, jnp.float32)
  num = gram.shape[0]
  valid = jnp.ones(num, bool) if valid is None else jnp.asarray(valid, bool)
  if num == 1:
    return valid.astype(jnp.float32)
  # the weights do not change when all gradients are scaled alike: keep the entries near 1
  diag = jnp.where(valid, jnp.diagonal(gram), 0.0)
  gram = gram / jnp.maximum(diag.max(), jnp.finfo(jnp.float32).tiny)

  # the best pair, first in (i, j) order among equal costs, as the official double loop
  i, j = jnp.triu_indices(num, 1)
  gammas, costs = min_norm_pair(gram[i, i], gram[i, j], gram[j, j])
  best = jnp.argmin(jnp.where(valid[i] & valid[j], costs, jnp.inf))
  start = jnp.zeros(num).at[i[best]].set(gammas[best]).at[j[best]].set(1 - gammas[best])

  def frank_wolfe_step(carry):
    step, weights, _ = carry
    grad = gram @ weights  # half the gradient of w^T G w
    vertex = jnp.argmin(jnp.where(valid, grad, jnp.inf))
    gamma, _ = min_norm_pair(weights @ grad, grad[vertex], gram[vertex, vertex])
    new = (gamma * weights).at[vertex].add(1 - gamma)
    converged = jnp.abs(new - weights).sum() < STOP_CRIT
    return step + 1, jnp.where(converged, weights, new), converged

  def keep_going(carry):
    step, _, converged = carry
    return (step < MAX_ITER) & ~converged

  count = valid.sum()
  _, weights, _ = jax.lax.while_loop(keep_going, frank_wolfe_step, (0, start, count < 3))
  return jnp.where(count >= 2, weights, valid / jnp.maximum(count, 1))


def normalizers(gram: jax.Array, losses: jax.Array, normalization: str) -> jax.Array:
  """(T,) official `gradient_normalizers`: 1, |g_t|, loss_t or loss_t |g_t|."""
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
  if normalization == "none":
    return jnp.ones_like(norms)
  if normalization == "l2":
    return norms
  if normalization == "loss":
    return losses
  if normalization == "loss+":
    return losses * norms
  raise ValueError(f"MGDA normalization {normalization!r}: use one of {NORMALIZATIONS}")


def gram_matrix(task_grads) -> jax.Array:
  """(T, T) float32 inner products of per-task gradients: pytrees whose leaves lead with T."""
  gram = 0.0
  for leaf in jax.tree.leaves(task_grads):
    flat = leaf.reshape(leaf.shape[0], -1).astype(jnp.float32)
    gram += jnp.einsum("tp,sp->ts", flat, flat, precision=jax.lax.Precision.HIGHEST)
  return gram


def combine(task_grads, weights: jax.Array):
  """sum_t weights[t] * task_grads[t], leaf by leaf."""
  return jax.tree.map(
    lambda g: jnp.einsum(
      "t,t...->...", weights.astype(g.dtype), g, precision=jax.lax.Precision.HIGHEST
    ),
    task_grads,
  )


def task_weights(
  task_grads, losses: jax.Array, valid: jax.Array, normalization: str = "none"
) -> jax.Array:
  """MGDA weights of the tasks: per-task gradients (leaves lead with T), losses and valid (T,)."""
  gram = gram_matrix(task_grads)
  scale = normalizers(gram, losses, normalization)
  scale = jnp.where(valid & (scale > 0), scale, 1.0)
  return min_norm_weights(gram / jnp.outer(scale, scale), valid)
