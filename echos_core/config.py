"""One typed configuration tree: model, data, init, train, seed.

It is loaded from YAML, overridden from the command line with dotted ``key=value``
pairs, and validated once, here, before anything is built.  Every error is one line
that names the field, the value and the rule (:class:`ConfigError`).

Each field carries a one-line ``doc`` in its metadata; ``echos train --help-config``
prints them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import yaml

from .dog import NORMALISATIONS
from .registry import scheme_names
from .validation import ConfigError, check_yaml_size, choice, float_range, int_range, is_int, load_yaml, nonempty

__all__ = [
    "ConfigError",
    "ModelConfig",
    "DataConfig",
    "AugmentConfig",
    "InitConfig",
    "TrainConfig",
    "MlflowConfig",
    "Config",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "flatten",
    "describe",
]


def _doc(text: str, **kw: Any) -> dict:
    return {"doc": text, **kw}


# --------------------------------------------------------------------------- sections


@dataclass
class ModelConfig:
    name: str = field(default="convmixer_cifar", metadata=_doc(
        "model name: an echos model (convmixer, convmixer_cifar, hornet_cifar, hornet_tiny, "
        "hornet_small) or any timm model with depthwise convolutions (convnext_atto, mobilenetv3_small_100, ...)"))
    kernel_size: Optional[int] = field(default=None, metadata=_doc(
        "depthwise kernel size override (odd, 3 to 13); null keeps the model's own"))
    dim: Optional[int] = field(default=None, metadata=_doc("width override (ConvMixer: channels; ConvNeXt / HorNet: first-stage width, doubled per stage)"))
    depth: Optional[int] = field(default=None, metadata=_doc("depth override (ConvMixer only: number of blocks)"))
    patch_size: Optional[int] = field(default=None, metadata=_doc("patch-embedding stride override (ConvMixer, ConvNeXt, HorNet)"))
    drop_path: float = field(default=0.0, metadata=_doc("stochastic depth rate, in [0, 1)"))
    drop_rate: float = field(default=0.0, metadata=_doc("dropout before the classifier, in [0, 1)"))

    def validate(self, p: str = "model") -> None:
        nonempty(f"{p}.name", self.name)
        if self.kernel_size is not None:
            int_range(f"{p}.kernel_size", self.kernel_size, 3, 13)
            if self.kernel_size % 2 == 0:
                raise ConfigError(f"{p}.kernel_size", self.kernel_size, "must be odd")
        for n in ("dim", "depth", "patch_size"):
            v = getattr(self, n)
            if v is not None:
                int_range(f"{p}.{n}", v, 1, None)
        float_range(f"{p}.drop_path", self.drop_path, 0.0, 1.0, hi_open=True)
        float_range(f"{p}.drop_rate", self.drop_rate, 0.0, 1.0, hi_open=True)


@dataclass
class AugmentConfig:
    hflip: float = field(default=0.5, metadata=_doc("horizontal flip probability"))
    crop_padding: int = field(default=0, metadata=_doc(
        "small images (<= 64 px): random crop with this much reflect padding; 0 = none"))
    randaugment: Optional[str] = field(default=None, metadata=_doc(
        "timm RandAugment string, e.g. 'rand-m9-mstd0.5-inc1'; null = off"))
    random_erasing: float = field(default=0.0, metadata=_doc("timm random-erasing probability"))
    mixup: float = field(default=0.0, metadata=_doc("timm mixup alpha; 0 = off"))
    cutmix: float = field(default=0.0, metadata=_doc("timm CutMix alpha; 0 = off"))
    mix_prob: float = field(default=1.0, metadata=_doc("probability of applying mixup/CutMix to a batch"))

    def validate(self, p: str = "data.augment") -> None:
        float_range(f"{p}.hflip", self.hflip, 0.0, 1.0)
        int_range(f"{p}.crop_padding", self.crop_padding, 0, 64)
        if self.randaugment is not None and not str(self.randaugment).startswith("rand"):
            raise ConfigError(f"{p}.randaugment", self.randaugment,
                              "must be a timm RandAugment string starting with 'rand' (e.g. 'rand-m9-mstd0.5') or null")
        float_range(f"{p}.random_erasing", self.random_erasing, 0.0, 1.0)
        float_range(f"{p}.mixup", self.mixup, 0.0, None)
        float_range(f"{p}.cutmix", self.cutmix, 0.0, None)
        float_range(f"{p}.mix_prob", self.mix_prob, 0.0, 1.0)


DATASETS = ("embedded", "digits", "fashion_mnist", "cifar10", "cifar100", "imagefolder", "fake")
PIPELINES = ("auto", "resident", "loader")
SMALL_MAX = 64  # inputs up to this side use the small (uint8 tensor) augmentations, per sample or resident


@dataclass
class DataConfig:
    name: str = field(default="embedded", metadata=_doc(
        "data set: embedded (scikit-image photographs, no download), digits (scikit-learn handwriting), "
        "fashion_mnist (Debian's dataset-fashion-mnist or idx files), cifar10, cifar100, imagefolder, fake"))
    root: Optional[str] = field(default=None, metadata=_doc(
        "where data lives (CIFAR folder, ImageFolder root with train/ and val/, Fashion-MNIST idx files); "
        "null = ~/.cache/echos/data (Fashion-MNIST: /usr/share/datasets/fashion-mnist first)"))
    download: bool = field(default=False, metadata=_doc("CIFAR, Fashion-MNIST: download through torchvision if missing"))
    image_size: int = field(default=32, metadata=_doc("side of the (square) network input in pixels"))
    train_limit: Optional[int] = field(default=None, metadata=_doc("use at most this many training images (seeded subset)"))
    val_limit: Optional[int] = field(default=None, metadata=_doc("use at most this many validation images (first ones)"))
    num_workers: int = field(default=0, metadata=_doc("DataLoader worker processes (loader pipeline)"))
    pipeline: str = field(default="auto", metadata=_doc(
        "resident (whole split as one uint8 tensor on the training device, augmentation batched there), "
        "loader (per-sample timm transforms in a DataLoader), auto (resident whenever it can do every "
        "configured augmentation)"))
    fake_size: int = field(default=256, metadata=_doc("fake data: number of training images (validation gets a quarter)"))
    fake_classes: int = field(default=10, metadata=_doc("fake data: number of classes"))
    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata=_doc("training augmentation"))

    def validate(self, p: str = "data") -> None:
        choice(f"{p}.name", self.name, DATASETS)
        if self.name == "imagefolder" and not self.root:
            raise ConfigError(f"{p}.root", self.root, "is required when data.name is 'imagefolder'")
        int_range(f"{p}.image_size", self.image_size, 8, 1024)
        for n in ("train_limit", "val_limit"):
            v = getattr(self, n)
            if v is not None:
                int_range(f"{p}.{n}", v, 1, None)
        int_range(f"{p}.num_workers", self.num_workers, 0, 256)
        int_range(f"{p}.fake_size", self.fake_size, 4, None)
        int_range(f"{p}.fake_classes", self.fake_classes, 2, None)
        self.augment.validate(f"{p}.augment")
        choice(f"{p}.pipeline", self.pipeline, PIPELINES)
        if self.pipeline == "resident" and self.resident_blockers():
            field_name, value, why = self.resident_blockers()[0]
            raise ConfigError(f"{p}.{field_name}", value, f"data.pipeline=resident cannot do this: {why}")

    def resident_blockers(self) -> list[tuple[str, Any, str]]:
        """(field, value, why) for everything the resident data path cannot do; empty when it can run.

        The resident path (``echos_core.data.resident``) does, batched on the device: crop with
        reflect padding, horizontal flip, normalisation, random erasing, and mixup/CutMix (timm's
        ``Mixup`` on the batch).  It serves in-memory data sets at inputs up to ``SMALL_MAX`` px.
        """
        out = []
        if self.name == "imagefolder":
            out.append(("name", self.name, "ImageFolder images are decoded per sample from files"))
        if self.image_size > SMALL_MAX:
            out.append(("image_size", self.image_size,
                        f"inputs above {SMALL_MAX} px use timm's per-sample RandomResizedCrop transform"))
        if self.augment.randaugment:
            out.append(("augment.randaugment", self.augment.randaugment,
                        "RandAugment is a per-sample PIL transform (use data.pipeline=loader or auto)"))
        return out

    def resolved_pipeline(self) -> str:
        """``pipeline`` with ``auto`` decided: resident when nothing blocks it, else loader."""
        if self.pipeline != "auto":
            return self.pipeline
        return "loader" if self.resident_blockers() else "resident"


SCALE_RULES = ("unit", "kaiming", "match")


@dataclass
class InitConfig:
    scheme: str = field(default="dog", metadata=_doc(
        "init of depthwise kernels: a registered scheme (echos_core.registry; the built-in ones are in echos_core.inits)"))
    gamma_low: float = field(default=0.3, metadata=_doc("dog: lower end of the per-kernel centre/surround ratio, in (0, 1)"))
    gamma_high: float = field(default=0.7, metadata=_doc("dog: upper end of the gamma range, in (0, 1), >= gamma_low"))
    on_ratio: float = field(default=0.5, metadata=_doc(
        "dog: fraction of On-centre kernels in every layer (exactly round(on_ratio * n))"))
    scale: str = field(default="unit", metadata=_doc(
        "dog / random-field: unit (lobes sum to +1/-1), kaiming (Kaiming-normal expected norm), "
        "match (the norm of the init it replaces, per layer)"))
    fraction: float = field(default=1.0, metadata=_doc("fraction of each layer's kernels replaced; the rest keep the base init"))
    noise: float = field(default=0.0, metadata=_doc("std of Gaussian noise added to replaced kernels, relative to their RMS"))
    normalisation: str = field(default="lobe", metadata=_doc("dog: lobe (default) or oocs amplitudes"))
    length_scale: float = field(default=1.5, metadata=_doc(
        "random-field: length scale (pixels) of the Gaussian spatial covariance"))

    def validate(self, p: str = "init") -> None:
        choice(f"{p}.scheme", self.scheme, scheme_names())
        float_range(f"{p}.gamma_low", self.gamma_low, 0.0, 1.0, lo_open=True, hi_open=True)
        float_range(f"{p}.gamma_high", self.gamma_high, 0.0, 1.0, lo_open=True, hi_open=True)
        if self.gamma_high < self.gamma_low:
            raise ConfigError(f"{p}.gamma_high", self.gamma_high, f"must be >= init.gamma_low ({self.gamma_low})")
        float_range(f"{p}.on_ratio", self.on_ratio, 0.0, 1.0)
        choice(f"{p}.scale", self.scale, SCALE_RULES)
        float_range(f"{p}.fraction", self.fraction, 0.0, 1.0)
        float_range(f"{p}.noise", self.noise, 0.0, None)
        choice(f"{p}.normalisation", self.normalisation, NORMALISATIONS)
        float_range(f"{p}.length_scale", self.length_scale, 0.0, None, lo_open=True)


@dataclass
class TrainConfig:
    epochs: int = field(default=10, metadata=_doc("training epochs"))
    batch_size: int = field(default=128, metadata=_doc("images per optimiser step"))
    lr: float = field(default=2e-3, metadata=_doc("AdamW peak learning rate"))
    weight_decay: float = field(default=0.05, metadata=_doc("AdamW decoupled weight decay"))
    warmup_epochs: float = field(default=1.0, metadata=_doc("linear warm-up length in epochs (fractions allowed)"))
    min_lr: float = field(default=1e-5, metadata=_doc("learning rate at the end of the cosine schedule"))
    label_smoothing: float = field(default=0.1, metadata=_doc("label smoothing of the cross-entropy"))
    grad_clip: Optional[float] = field(default=1.0, metadata=_doc("clip the global gradient norm to this; null = off"))
    device: str = field(default="auto", metadata=_doc("auto (cuda if available), cpu, cuda, cuda:N"))
    amp: str = field(default="auto", metadata=_doc("auto (bf16 on cuda), bf16, off"))
    channels_last: str = field(default="auto", metadata=_doc(
        "auto (on when the model has depthwise convolutions, on CPU and CUDA), on, off"))
    compile: bool = field(default=False, metadata=_doc("torch.compile the model"))
    steps_per_epoch: Optional[int] = field(default=None, metadata=_doc("cap optimiser steps per epoch (smoke runs)"))
    checkpoint_every: int = field(default=1, metadata=_doc("save a checkpoint every N epochs (the last always)"))
    keep_checkpoints: int = field(default=1, metadata=_doc("how many epoch checkpoints to keep in the run folder"))
    threads: Optional[int] = field(default=None, metadata=_doc("torch CPU threads; null = torch's default"))
    kernel_metrics: bool = field(default=True, metadata=_doc(
        "log On/Off/other fractions, centre-surround index and DoG fit of the depthwise kernels each epoch, "
        "and kernel mosaics at init and at the last epoch"))

    def validate(self, p: str = "train") -> None:
        int_range(f"{p}.epochs", self.epochs, 1, None)
        int_range(f"{p}.batch_size", self.batch_size, 1, None)
        float_range(f"{p}.lr", self.lr, 0.0, None, lo_open=True)
        float_range(f"{p}.weight_decay", self.weight_decay, 0.0, None)
        float_range(f"{p}.warmup_epochs", self.warmup_epochs, 0.0, None)
        float_range(f"{p}.min_lr", self.min_lr, 0.0, None)
        if self.min_lr > self.lr:
            raise ConfigError(f"{p}.min_lr", self.min_lr, f"must be <= train.lr ({self.lr})")
        float_range(f"{p}.label_smoothing", self.label_smoothing, 0.0, 1.0, hi_open=True)
        if self.grad_clip is not None:
            float_range(f"{p}.grad_clip", self.grad_clip, 0.0, None, lo_open=True)
        dev = str(self.device)
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ConfigError(f"{p}.device", self.device, "must be one of auto, cpu, cuda, cuda:N")
        choice(f"{p}.amp", self.amp, ("auto", "bf16", "off"))
        choice(f"{p}.channels_last", self.channels_last, ("auto", "on", "off"))
        if self.steps_per_epoch is not None:
            int_range(f"{p}.steps_per_epoch", self.steps_per_epoch, 1, None)
        int_range(f"{p}.checkpoint_every", self.checkpoint_every, 1, None)
        int_range(f"{p}.keep_checkpoints", self.keep_checkpoints, 1, None)
        if self.threads is not None:
            int_range(f"{p}.threads", self.threads, 1, None)


@dataclass
class MlflowConfig:
    enabled: bool = field(default=True, metadata=_doc(
        "`echos train` logs the run to MLflow (false: the run folder only); sweeps always log"))
    tracking_uri: Optional[str] = field(default=None, metadata=_doc(
        "MLflow tracking URI for `echos train`; null = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db "
        "(the store `echos ui` and sweeps use; sweeps set their own)"))
    experiment: str = field(default="train", metadata=_doc("MLflow experiment of `echos train` runs"))

    def validate(self, p: str = "mlflow") -> None:
        nonempty(f"{p}.experiment", self.experiment)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig, metadata=_doc("the network"))
    data: DataConfig = field(default_factory=DataConfig, metadata=_doc("the data set and augmentation"))
    init: InitConfig = field(default_factory=InitConfig, metadata=_doc("init of depthwise kernels"))
    train: TrainConfig = field(default_factory=TrainConfig, metadata=_doc("optimisation"))
    mlflow: MlflowConfig = field(default_factory=MlflowConfig, metadata=_doc("MLflow logging of `echos train`"))
    seed: int = field(default=0, metadata=_doc("seed of init, data order, augmentation and dropout"))
    output_dir: str = field(default="runs", metadata=_doc("parent folder of run folders"))
    run_name: Optional[str] = field(default=None, metadata=_doc("run folder name; null = derived from model, init and seed"))

    def validate(self) -> "Config":
        self.model.validate()
        self.data.validate()
        self.init.validate()
        self.train.validate()
        self.mlflow.validate()
        int_range("seed", self.seed, 0, 2**32 - 1)
        nonempty("output_dir", self.output_dir)
        return self

    def init_label(self) -> str:
        """The init in a few characters: ``kaiming``, ``dog-on0.25``."""
        return f"dog-on{self.init.on_ratio:g}" if self.init.scheme == "dog" else self.init.scheme

    def model_label(self) -> str:
        """The model and data in a few characters: ``convmixer-k5-embedded``."""
        ks = f"-k{self.model.kernel_size}" if self.model.kernel_size else ""
        return f"{self.model.name}{ks}-{self.data.name}"

    def default_run_name(self) -> str:
        """What differs between runs first (init, seed), the model after: ``dog-on0.25-s1-convmixer-k5-embedded``
        (MLflow's runs table cuts long names)."""
        return f"{self.init_label()}-s{self.seed}-{self.model_label()}"


# --------------------------------------------------------------------------- building from dicts


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotated type ``tp`` (ints are accepted for floats)."""
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(name, value, "must not be null")
    if dataclasses.is_dataclass(base):
        return _build(base, value, name)
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, value, "must be true or false")
        return value
    if base is int:
        if not is_int(value):
            raise ConfigError(name, value, "must be an integer")
        return value
    if base is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(name, value, "must be a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(name, value, "must be a number")
        return float(value)
    if base is str:
        if isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no as booleans
            value = "on" if value else "off"
        if not isinstance(value, str):
            raise ConfigError(name, value, "must be a string")
        return value
    if typing.get_origin(base) is Literal:
        choice(name, value, typing.get_args(base))
        return value
    return value


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(prefix or "config", data, "must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(full, value, f"unknown key; allowed keys{' of ' + prefix if prefix else ''}: {', '.join(names)}")
        kwargs[key] = _coerce(full, value, hints[key])
    return cls(**kwargs)


def config_from_dict(data: Optional[dict]) -> Config:
    """Build and validate a :class:`Config` from a (possibly partial) nested dict."""
    return _build(Config, data or {}).validate()


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def _known_paths(cls: type = Config, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        base, _ = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(base):
            out.extend(_known_paths(base, key))
        else:
            out.append(key)
    return out


def set_dotted(d: dict, key: str, value: Any) -> None:
    """Set ``d['a']['b'] = value`` for ``key='a.b'``, checking the key exists in the schema."""
    known = _known_paths()
    if key not in known:
        section = key.rsplit(".", 1)[0] if "." in key else ""
        siblings = [k for k in known if k.rsplit(".", 1)[0] == section] if section else [k for k in known if "." not in k]
        hint = ", ".join(siblings) if siblings else ", ".join(sorted({k.split('.')[0] for k in known}))
        raise ConfigError(key, value, f"unknown key; allowed: {hint}")
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str] | dict[str, Any]) -> dict:
    """Apply ``key=value`` strings (values parsed as YAML) or a flat dict of dotted keys."""
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides:
            if "=" not in item:
                raise ConfigError(item, None, "override must look like key=value (e.g. init.on_ratio=0.25)")
            k, v = item.split("=", 1)
            try:
                value = yaml.safe_load(v) if v != "" else None
            except yaml.YAMLError as e:
                raise ConfigError(k.strip(), v, f"is not a valid YAML value ({e.__class__.__name__})") from None
            check_yaml_size(value, k.strip())
            items.append((k.strip(), value))
    for k, v in items:
        set_dotted(data, k, v)
    return data


def load_config(path: Optional[str | Path] = None, overrides: list[str] | dict | None = None) -> Config:
    """YAML file (optional) + overrides -> validated :class:`Config`."""
    data: dict = {}
    if path is not None:
        data = load_yaml(path, "--config") or {}
        if not isinstance(data, dict):
            raise ConfigError("--config", str(path), "must contain a mapping at the top level")
    if overrides:
        apply_overrides(data, overrides)
    return config_from_dict(data)


def yaml_value(v: Any) -> str:
    """``v`` spelt as a ``key=value`` override takes it: YAML (``null``, ``false``, ``[0.3, 0.7]``)."""
    text = yaml.safe_dump(v, default_flow_style=True, width=10**6).strip()
    return text[:-len("...")].strip() if text.endswith("...") else text


def describe() -> str:
    """A listing of every config key with its default (as YAML, the way overrides spell it) and one-line doc."""
    lines = []

    def walk(cls: type, obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}.{f.name}" if prefix else f.name
            base, _ = _unwrap_optional(hints[f.name])
            val = getattr(obj, f.name)
            if dataclasses.is_dataclass(base):
                walk(base, val, key)
            else:
                lines.append(f"{key} = {yaml_value(val)}  # {f.metadata.get('doc', '')}")

    walk(Config, Config(), "")
    return "\n".join(lines)
