"""The names a user needs import from the package and its subpackages."""

import importlib

import pytest

import bottlenecks


@pytest.mark.parametrize("name", [n for n in bottlenecks.__all__ if n != "__version__"])
def test_top_level_names_resolve(name):
    assert getattr(bottlenecks, name) is not None


@pytest.mark.parametrize("package", ["layers", "models", "data", "encoders", "losses", "estimators",
                                     "analysis", "continual"])
def test_subpackages_export_what_they_list(package):
    mod = importlib.import_module(f"bottlenecks.{package}")
    assert mod.__all__, f"bottlenecks.{package} exports nothing"
    for name in mod.__all__:
        assert hasattr(mod, name), f"bottlenecks.{package}.__all__ names {name!r}, which it lacks"


def test_unknown_name_is_a_clear_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        bottlenecks.Nope  # noqa: B018
