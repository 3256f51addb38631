"""TRM: layers, decoder, ACT wrapper, loss head, puzzle embedding, checkpoint import; and model building."""
