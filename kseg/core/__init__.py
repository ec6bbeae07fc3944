"""Basics every part of kseg shares: errors, settings and their checks, safe file writing, input and output
files, image reading, command-line helpers. Nothing here imports TensorFlow."""
