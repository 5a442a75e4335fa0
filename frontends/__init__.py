"""Frontends: each reads a model description into a Graph. Found by file suffix through the
`cnncomp.frontends` entry points."""
