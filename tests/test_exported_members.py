import types

import pytest

import chatstate
import chatstate.bench
import chatstate.middleware
import chatstate.monitoring
import chatstate.providers
import chatstate.stores
import chatstate.testing


def _isort_style(name: str) -> tuple[int, str]:
    # ruff's RUF022 order: CONSTANTS, then Classes, then functions and the rest.
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


@pytest.mark.parametrize(
    "module",
    [
        chatstate,
        chatstate.bench,
        chatstate.middleware,
        chatstate.monitoring,
        chatstate.providers,
        chatstate.stores,
        chatstate.testing,
    ],
    ids=lambda module: module.__name__,
)
def test_all_is_sorted_and_complete(module: types.ModuleType) -> None:
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name not in {"TYPE_CHECKING", "Any"}
    }
    assert module.__all__ == sorted(module.__all__, key=_isort_style)
    lazy = {name for name in module.__all__ if name not in vars(module)}
    assert lazy <= {
        "OpenAICompatibleProvider",
        "RedisStateStore",
        "StateStoreConformance",
        "sample_conversation",
    }
    assert set(module.__all__) - lazy - {"__version__"} == public
    for name in lazy:  # imported on first use: the name gives what it says
        assert getattr(module, name).__name__ == name


def test_version() -> None:
    assert chatstate.__version__ == "0.1.0"
