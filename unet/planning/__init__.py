"""What training is planned from: the data's fingerprint, the machine, the rules, the search space.

fingerprint  what the plan measures: the training split's data, the machine's speed and memory
plan         the training plan: every `auto` setting from the fingerprint, as named rules
sizing       the network input and crop, and how the model meets other sizes (predict_scale)
search       the hyperparameter search's Optuna side: space, trial settings, study, storage
"""
