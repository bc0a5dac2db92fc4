"""Paths: the token-mixing computations mixers are assembled from, each over a projected slice of
the input. A mixer file adds projections around one path (or, the parallel hybrid head, two) and
registers; mixer files never import each other, they share paths."""
