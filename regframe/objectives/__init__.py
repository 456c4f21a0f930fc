"""Training signals as small ``nn.Module``s chosen in YAML by ``class_path``: each one turns an
estimator's output on a pair into a loss, so the methods that use them stay thin."""
