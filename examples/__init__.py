"""Runnable examples (CPU interpreter and GPU); importable by the tests and the AOT tier."""
