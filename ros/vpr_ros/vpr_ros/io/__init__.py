"""Inputs and outputs: image folders, pose files, datasets, rosbags."""
