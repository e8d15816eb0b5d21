"""One trial, from its spec to its row: the cell, poisoning, the defense, evaluation."""
