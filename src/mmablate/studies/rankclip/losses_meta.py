"""Names of the decay functions and loss scales, importable without torch (config validation)."""

DECAY_LABELS = {
    "constant": "constant 1",
    "inv_k": "1/k",
    "inv_k_plus_1": "1/(k+1)",
    "exp_neg_k": "exp(-k)",
    "inv_log_k_plus_1": "1/log(k+1)",
}

# loss.scale: how the ranking term enters the objective (`losses` module docstring)
SCALES = ("paper", "authors_code")
