"""Integer-only ViT inference (I-ViT, "I-ViT: Integer-only Quantization for Efficient Vision Transformer
Inference", Li & Gu, ICCV 2023): ``functional`` (kernels), ``modules``, ``convert`` (fx conversion + freeze),
``executor`` (numpy int64), ``onnx_export``, ``tvm_build``, ``checker``; recipe stage ``ivit`` in ``stages``.
Import the sub-modules you need; nothing heavy is imported here."""
