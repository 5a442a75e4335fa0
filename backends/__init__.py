"""Backends: each turns a Graph into an executable. Found by name through the `cnncomp.backends` entry points."""
