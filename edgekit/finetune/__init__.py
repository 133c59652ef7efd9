"""Generic training stages: ``finetune`` (optionally distilled from the original model) and ``evaluate``."""
