"""The vision stream: a MONAI Swin Transformer (2D frames and images, 3D CT) with MoE blocks.

    from core.vision import VisionStream, VisionStreamConfig
    stream = VisionStream(VisionStreamConfig(spatial_dims=3, in_channels=1))
    out = stream(volume, task_id)             # volume: [B, 1, D, H, W], sides multiples of 32
    loss = task_loss(out.pooled) + out.aux_loss
"""
from .swin import NUM_STAGES, SwinMoEMLP, VisionOutput, VisionStream, VisionStreamConfig

__all__ = ["NUM_STAGES", "SwinMoEMLP", "VisionOutput", "VisionStream", "VisionStreamConfig"]
