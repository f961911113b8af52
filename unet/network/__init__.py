"""The U-Net and where and in which number format it runs.

model      the U-Net: DoubleConv, Up, UNet, parts named after the paper's figure
precision  device, autocast dtype and memory format
"""
