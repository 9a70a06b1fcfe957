"""From record bytes to pixels: full decoding, fused crop decoding on the CPU, batched decoding
and resampling on the device, and the uint8 transforms.
"""
