"""Beam PTransforms, one module per step of the Safety Pretraining method."""
