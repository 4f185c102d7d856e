"""The audio stream: strided 1D convolutions (waveforms or spectrograms) and an MoE block.

    from core.audio import AudioBatch, AudioStream, AudioStreamConfig
    stream = AudioStream(AudioStreamConfig())          # 16 kHz waveforms [B, samples]
    out = stream(waveform, task_id)                    # out.tokens [B, T, 384]
    batch = AudioBatch.from_clips([clip_1s, clip_4s])   # zero-padded, with lengths [B]
    out = stream(batch.audio, task_id, lengths=batch.lengths)  # out.mask [B, T]: True = real token
"""
from .stream import AudioBatch, AudioBlock, AudioOutput, AudioStream, AudioStreamConfig, ConvLayer

__all__ = ["AudioBatch", "AudioBlock", "AudioOutput", "AudioStream", "AudioStreamConfig", "ConvLayer"]
