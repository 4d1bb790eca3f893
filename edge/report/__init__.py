"""``gloss-edge eval --report``: an evaluation as one self-contained HTML file.

Modules, bottom up: ``runs`` (per-user ranks, curves, segments, paired bootstrap comparison; numpy only),
``plots`` (matplotlib figures as SVG, the ``plot`` extra), ``html`` (the page).
"""
