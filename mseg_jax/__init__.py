"""mseg-jax: MSeg multi-domain semantic segmentation in JAX/Flax."""
