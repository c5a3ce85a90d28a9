"""Training phases and models: the only package that imports the deep-learning backend."""
