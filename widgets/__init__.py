"""Notebook panels (ipywidgets + plotly) over the learner's public API."""
