"""The research plan's health thresholds, shared by `diagnose` and `compare` (one definition for both)."""

# "Decision Points / If E0b fails": "Verify gradient flow (encoder should get ~40% of gradients)".
EXPECTED_GRAD_SHARE = 0.4
# Below an eighth of that the encoder is starved: its parameters barely move (the public ETRMTRM bug gave 0).
STARVED_GRAD_SHARE = 0.05
# "Key Metrics / Encoder Health": "train/encoder_cross_sample_var: Should be >0.3";
# "Red Flag 1": "Encoder variance collapses (<0.1)".
HEALTHY_VAR = 0.3
COLLAPSED_VAR = 0.1
