"""Validation and cardinality policy: what is checked, sanitised and folded before anything is recorded."""
