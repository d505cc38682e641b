"""Small helpers every package uses: atomic file writes (``atomic``) and a one-line description of
the machine (``machine``). They import nothing else of r2n2."""
