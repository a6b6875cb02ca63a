"""Prompts on which the fast int8 copy must decode what float32 decodes (SmolLM2 tests; the
same list as bench/generate.py's, which runs without the tests package)."""

PROBES = [
    "The capital of France is",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "To make a cup of tea, first",
    "Photosynthesis is the process by which",
]
