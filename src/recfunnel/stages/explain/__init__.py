"""Explanation stages: reasons for the final list's top items, checked before shown."""
