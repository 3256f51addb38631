"""TRM: layers, decoder, ACT wrapper, loss head, puzzle embedding, checkpoint import; and model building.

"TRM@e7b6871" in these docstrings is TRM's reference code, github.com/SamsungSAILMontreal/TinyRecursiveModels
at commit e7b6871: the code this decoder equals numerically (tests/test_decoder_equivalence.py checks it
against golden outputs of that code, tests/fixtures/).
"""
