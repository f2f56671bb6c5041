"""Offline analysis tools: video rendering of rollouts, grids of samples, diagnostics.

Submodules are imported explicitly (``from analysis.video import write_video``) so that
importing the package never pulls in optional heavy dependencies such as PyAV or Pillow.
"""
