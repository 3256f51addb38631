"""The research plan's health thresholds, shared by `diagnose` and `compare` (one definition for both)."""

# "Decision Points / If E0b fails": "Verify gradient flow (encoder should get ~40% of gradients)".
# Read as a fraction of the gradient, that is grad/encoder_share_sq = ||g_enc||² / (||g_enc||² + ||g_dec||²)
# (training/metrics.grad_norms); grad/encoder_share = ||g_enc|| / ||g_total|| is a norm ratio (0.4 of it is
# 0.16 of the squared norm), kept for old runs.
EXPECTED_GRAD_SHARE = 0.4
# Below an eighth of that the encoder is starved: its parameters barely move (the public ETRMTRM bug gave 0).
STARVED_GRAD_SHARE = 0.05
# The same limits for grad/encoder_share_sq. Starved: the squared form of STARVED_GRAD_SHARE, i.e. the same
# event, so both keys agree on it. Measured (tiny profile, batch 4; per-step values are noisy, the verdict
# reads final means): fresh models 0.10 (recurrent_standard), 0.15 (trm_style), 0.68 (static) at step 1;
# means over steps 1-150 / 1351-1500 of 1,500-step runs: recurrent_standard 0.051 / 0.084, trm_style 0.13 /
# 0.24, static 0.13 / 0.25 (per-step extremes 0.004 and 0.89). Cpu profile (hidden 64, batch 32):
# recurrent_standard 0.22 at step 1, 0.06-0.18 over steps 73-80; trm_style 0.94 at step 1 (from scratch),
# 0.05-0.23 over steps 37-40. A planted 1e-6 context gives ~1e-10.
STARVED_GRAD_SHARE_SQ = STARVED_GRAD_SHARE**2  # 0.0025: 20x below the lowest healthy mean seen (0.051)
# The band "far from 0.4": outside it the split is off by more than a factor ~16 in odds (0.4 : 0.6) either
# way. LOW is the squared form of diagnose's norm-ratio warning (0.2² = 0.04); HIGH = the decoder (the
# pretrained part) gets under a tenth. Warnings, not bugs: tiny recurrent_standard sits near LOW, and a
# from-scratch trm_style starts above HIGH for a few steps.
LOW_GRAD_SHARE_SQ = 0.04
HIGH_GRAD_SHARE_SQ = 0.9
# "Key Metrics / Encoder Health": "train/encoder_cross_sample_var: Should be >0.3";
# "Red Flag 1": "Encoder variance collapses (<0.1)". For recurrent encoders read these against
# train/encoder_var_same_step (slots compared at the same ACT step only; equal to the plain figure while the
# batch runs in lockstep, and for the static encoder in expectation).
HEALTHY_VAR = 0.3
COLLAPSED_VAR = 0.1
# "Red Flag 2": "Carry state exploding/vanishing". The in-tree carries are post-norm, so their RMS is 1 by
# construction and cannot show it; train/encoder_update_ratio (the mean over slots and post-norm sublayers
# of ||update|| / ||input||, measured before the norm; encoders/base.py) can. Measured: fresh models 0.57
# (recurrent_standard) and 0.93 (trm_style) at the tiny profile, 0.67 and 0.66 at the cpu profile, 0.48 and
# 0.70-0.82 at the paper size (hidden 512, first 4 steps); 1,500-step tiny runs stay within 0.53-0.90 and
# 0.77-1.03 (per-step extremes), cpu-profile runs within 0.63-0.79 (80 steps) and 0.66-0.87 (40 steps).
# Vanishing: an update under 1% of the carry moves it less than encoder_convergence_tol (0.01) per sublayer:
# the carry would count as converged at every step (a planted zero update reads 0). 50x below healthy.
UPDATE_RATIO_VANISHING = 0.01
# Exploding: an update 10x the carry leaves the previous carry under a tenth of the normalised result per
# sublayer, i.e. forgotten within one ACT step (a planted 1e4 update reads ~6e3). 10x above healthy.
UPDATE_RATIO_EXPLODING = 10.0
# diagnose's context-use: train accuracy lost when every query reads another task's demos. Measured at the cpu
# profile (32 train queries, the eval rollout of 16 ACT steps, 2,000-step runs from one P0): E0a seeds 0-1 lose
# 24.8 and 29.2 points, E0b seeds 0-1 25.3 and 21.8, E0c seed 1 8.4, E0c seed 0 0.1 (its context had
# collapsed, and the answers did not need it). A model that reads its demos falls towards the mode-colour
# baseline (~73 %); under a fifth of that ~25-point fall, the answers barely depend on the demos.
DEMO_USE_DROP_PTS = 5.0
# ... and another task's demos that change this share of the predicted tokens or more are read, whatever they do
# to accuracy (a drop below the line above, even a gain, then says the answers do not rely on their own demos, not
# that the context is unused).
DEMOS_READ_CHANGED = 0.05
# ... and where those demos change the context (MIN_DEMO_DEPENDENCE below) but move no logit by more than this,
# relative to the largest logit, the decoder does not read its context. Measured: a decoder fed zeros in place of
# its prefix 0 exactly; fresh tiny E0a, E0b and E0c models 1.34, 1.32 and 0.63 (tests/test_diagnose.py's models).
UNMOVED_LOGITS = 1e-5
# diagnose's encoder-variance: a context that another task's demos change by less than this, relative to its own
# size, does not read the demos. Fresh tiny models: E0a 1.35, E0b 1.23, E0c 0.086; an encoder that reads the query
# grid in place of the demos: 1.2e-7 (float rounding), a constant context: 0.
MIN_DEMO_DEPENDENCE = 1e-3
# ... and a variance across distinct puzzles below this is one context for every puzzle, whatever training has
# done: an untrained encoder's contexts may start alike (fresh tiny models: E0c 0.0044, E0b 0.63), never equal. An
# encoder whose every slot reads the first slot's demos, or a constant context, gives exactly 0.
SAME_CONTEXT_VAR = 1e-8
