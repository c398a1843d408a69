"""Augmentations for stored views: parameters drawn per (sample, view), replayed exactly."""
