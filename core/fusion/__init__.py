"""Cross-modal fusion of the text, vision and audio streams.

    from core.fusion import CrossModalAttention, DynamicFusion, FusionConfig
    fusion = DynamicFusion(FusionConfig(strategy="task_gate"))
    out = fusion({"text": text.hidden, "vision": vision.tokens}, masks={"text": attention_mask},
                 task_id=task_id("report_reading"))
    out.fused                                  # [B, 384]; out.modality_weights [B, 3]
"""
from .cross_modal import MODALITIES, CrossModalAttention
from .dynamic import STRATEGIES, DynamicFusion, FusionConfig, FusionOutput

__all__ = ["MODALITIES", "STRATEGIES", "CrossModalAttention", "DynamicFusion", "FusionConfig", "FusionOutput"]
