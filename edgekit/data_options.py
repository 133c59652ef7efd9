"""Options of the data (a recipe's ``data:`` section): preprocessing and splits. Pydantic only, no torch, so
that recipes load without importing torch; the loaders are in :mod:`edgekit.data`."""

from __future__ import annotations

from typing import Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # train, calibration, test
Size = Union[int, tuple[int, int]]


class SplitFractions(BaseModel):
    """Fractions of one data source for each split (they must add up to 1)."""

    model_config = ConfigDict(extra="forbid")
    train: float = Field(SPLIT_FRACTIONS[0], ge=0, le=1)
    calibration: float = Field(SPLIT_FRACTIONS[1], ge=0, le=1)
    test: float = Field(SPLIT_FRACTIONS[2], gt=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitFractions":
        total = self.train + self.calibration + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + calibration + test = {total:g}; they must add up to 1")
        return self

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.train, self.calibration, self.test)


class DataOptions(BaseModel):
    """Preprocessing and splits of the data (a recipe's ``data:`` section, ``--set data.<field>=...``)."""

    model_config = ConfigDict(extra="forbid")
    resize: Size | None = Field(None, description="Image files: shorter side to N (aspect kept), or [H, W]. Default: straight to the model's H x W.")
    crop: Size | None = Field(None, description="Image files: center crop N or [H, W] after resize.")
    mean: list[float] | None = Field(None, description="Per-channel mean on the 0..1 scale (e.g. ImageNet 0.485,0.456,0.406). Default for image folders: one value estimated from up to 256 train images; other data is used as given.")
    std: list[float] | None = Field(None, description="Per-channel std on the 0..1 scale (e.g. ImageNet 0.229,0.224,0.225). Default: as for mean.")
    split: SplitFractions = Field(default_factory=SplitFractions, description="Fractions of one source for train / calibration / test.")
    batch_size: int = Field(16, ge=1, description="Samples decoded at once from a streamed source (also the evaluation batch): bounds memory.")
    calibration_max: int = Field(256, ge=1, description="Calibration samples held in memory at most (the rest of that fraction goes to train).")
    train: str | None = Field(None, description="A separate source (a folder of class folders or module:factory) for the train split; with test, no fractions are used.")
    calibration: str | None = Field(None, description="A separate source for the calibration split (default: drawn from train).")
    test: str | None = Field(None, description="A separate source for the test split.")
    num_classes: int | None = Field(None, ge=1, description="Number of classes; labels outside 0..num_classes-1 are rejected.")

    @field_validator("resize", "crop")
    @classmethod
    def _positive(cls, v):
        sizes = [v] if isinstance(v, int) else list(v or [])
        if any(s <= 0 for s in sizes):
            raise ValueError("sizes must be positive")
        return v

    @field_validator("std")
    @classmethod
    def _nonzero(cls, v):
        if v is not None and any(s <= 0 for s in v):
            raise ValueError("std values must be positive")
        return v
