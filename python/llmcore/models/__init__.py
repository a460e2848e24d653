"""Built-in models: checkpoint directories shipped with the package (tiny-random, demo) and the
code that builds the demo model (demo_corpus: its training text; train_demo: its training run)."""
