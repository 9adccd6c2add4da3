"""Perception primitives shared by mining and drift: geometry, the batch view, association."""
