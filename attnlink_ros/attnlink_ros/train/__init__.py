"""Offline training: losses, augmentation, trainer."""
