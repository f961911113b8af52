"""How good a model is: scoring at full resolution, metrics, baselines, label quality, panels.

scoring        testing a Segmenter on pairs at their original resolution; the TTA choice
metrics        Dice, IoU, accuracy per image and pooled, per class; the confusion matrix
baselines      the trivial baselines of the promotion floor
label_quality  masks that look wrong: a score per image from the model's predictions
visualize      panels image | truth | prediction | overlay; class colours
objects        per-object scores: IoU matches, the DSB 2018 mAP, AP at 0.5 and 0.75, F1, splits, merges
"""
