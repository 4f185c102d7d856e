"""Evidence benchmarks of the shared multimodal backbone, one module each:

    lm        MoE against dense FFNs at equal active parameters: held-out masked-token perplexity
              on CPython's documentation (`moe-suite bench lm`)
    fusion    each dynamic fusion strategy against concatenation: held-out VQA accuracy on shape
              world (`moe-suite bench fusion`)
    upcycle   MiniLM upcycled into the MoE text stream against the same stream from scratch

The package stays light to import: `core.bench.cli` registers `bench lm` and `bench fusion` without torch.
"""
