"""zipsgd: low-precision, double-sampled SGD for linear models on FPGAs."""

__version__ = "0.1.0"


__all__ = ["SGDRegressor", "SGDClassifier", "__version__"]


def __getattr__(name):
    # Lazy: `import zipsgd` stays cheap (no scikit-learn import until an estimator is used).
    if name in ("SGDRegressor", "SGDClassifier"):
        from . import estimators
        return getattr(estimators, name)
    raise AttributeError(f"module 'zipsgd' has no attribute {name!r}")
