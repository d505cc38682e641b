"""Voxel and image file formats."""
