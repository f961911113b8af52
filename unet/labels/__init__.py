"""What a mask's values mean: classes, instance labels, the void value.

classes  the classes of a folder's masks (binary, K classes), class-index maps, detection
masks    instance labels told from classes and antialiasing; void; compact renumbering
borders  the instance target of a label image: background, interior, border
"""
