"""Test helpers for users of chatstate and authors of stores (needs pytest).

For readable assertion failures, call ``pytest.register_assert_rewrite("chatstate.testing")`` in
your ``conftest.py`` before importing this package.
"""

from chatstate.testing.conformance import StateStoreConformance, sample_conversation

__all__ = ["StateStoreConformance", "sample_conversation"]
