"""Reading finished runs: the comparison matrix, its statistics and verdict, and the model diagnostics."""
