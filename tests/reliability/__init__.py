"""Reliability harnesses: crash consistency, power cuts, socket fuzzing, limits, disk full,
permissions, load.

Each harness is a module with a short form collected by pytest (`test_*.py` next to it) and a
long form run as `python -m tests.reliability.<name> --rounds N ...`; the figures of the long
forms are in docs/RELIABILITY.md with the command that produced each.
"""
