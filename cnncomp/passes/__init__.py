"""Optimization passes: one file per pass, each a function `Graph -> Graph` that returns a rewritten copy and
leaves its argument alone. Each docstring states the rewrite as an equation and its preconditions.
`cnncomp.pipeline` lists them per opt level; `rewrite` holds the helpers they share."""
