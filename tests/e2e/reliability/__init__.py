"""Tests of issue 6: bad input, safe outputs, Cloud Storage, the report card, progress, Safe
Beam Search."""
