"""Integer-only ViT inference (I-ViT, "I-ViT: Integer-only Quantization for Efficient Vision Transformer
Inference", Li & Gu, ICCV 2023): ``functional`` (kernels), ``modules``, ``convert`` (conversion driver +
freeze; ``handlers`` per op, ``aten`` for graphs captured with torch.export), ``program`` (the IViTModel class
and its saved form), ``executor`` (numpy int64), ``onnx_export`` / ``onnx_builder``, ``tvm_build``,
``checker``; recipe stage ``ivit`` in ``stages``. Import the sub-modules you need; nothing heavy is imported
here."""
