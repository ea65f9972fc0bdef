"""DreamFoley in JAX/Flax."""
