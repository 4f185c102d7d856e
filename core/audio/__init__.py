"""The audio stream: strided 1D convolutions (waveforms or spectrograms) and an MoE block.

    from core.audio import AudioStream, AudioStreamConfig
    stream = AudioStream(AudioStreamConfig())          # 16 kHz waveforms [B, samples]
    out = stream(waveform, task_id)                    # out.tokens [B, T, 384]
"""
from .stream import AudioBlock, AudioOutput, AudioStream, AudioStreamConfig, ConvLayer

__all__ = ["AudioBlock", "AudioOutput", "AudioStream", "AudioStreamConfig", "ConvLayer"]
