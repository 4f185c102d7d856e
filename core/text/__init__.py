"""Text stream of the shared multimodal core: MiniLM's encoder with task-aware MoE FFNs.

    from core.text import TextStreamConfig, upcycle_minilm, tokenize
    model = upcycle_minilm(TextStreamConfig())           # experts start as MiniLM's FFNs
    batch = tokenize(["where is my parcel?"])
    out = model(batch.input_ids, batch.attention_mask, task_id=task_id("intent"))
    out.pooled, out.aux_loss, out.stats                  # [B, D], scalar, one MoEStats per MoE layer
"""
from .config import TextStreamConfig
from .model import TextOutput, TextStream
from .tokenizer import TokenBatch, load_tokenizer, minilm_path, tokenize
from .trunk import PrefixCache, share_trunk
from .upcycle import from_scratch, upcycle_minilm

__all__ = [
    "TextStreamConfig", "TextStream", "TextOutput", "upcycle_minilm", "from_scratch",
    "tokenize", "load_tokenizer", "TokenBatch", "minilm_path", "share_trunk", "PrefixCache",
]
