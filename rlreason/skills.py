"""Skill vectors (PaST): the weight delta of RL training, carried to another model.

PaST (Tang, Wang and Zhang, ACL 2026, arXiv 2601.11258) observes that SFT and RL weight
updates are nearly orthogonal: the RL delta v = theta_rl - theta_sft of a source domain is
a "skill" that can be added, scaled, to a model that only got light SFT on a target domain.

A vector is a folder: `manifest.json` (kind, base identity, per-tensor dtype, shape and
norm, source recipe) and `vector-NNNNN.safetensors` shards. Every operation streams
tensor by tensor through safetensors' lazy readers, so memory stays at a few tensors,
never two models. Full vectors are stored one float width wider than the model (float64
for float32 weights): base + (tuned - base) then rounds back to exactly the tuned weights.
A LoRA adapter's delta stays low-rank (A, B and each module's scaling are stored; B @ A is
only formed per module when applied); adapters that are not base + scaling * B @ A per
module (DoRA, saved modules, ...) are refused, naming the adapter_config.json field, and
can be merged first (`merge_adapter`).
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

MANIFEST = "manifest.json"
SHARD_BYTES = 256 << 20  # a vector shard is written once this much is buffered
_WIDER = {torch.float32: torch.float64, torch.bfloat16: torch.float32, torch.float16: torch.float32}


class SkillError(ValueError):
    """A vector that cannot be used with this model; the message says what differs."""


# ---------------------------------------------------------------- reading models lazily


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    files = [f for f in files if not f.name.startswith("adapter_model")]
    if not files:
        raise SkillError(f"{folder}: no *.safetensors weights (a model saved with save_pretrained)")
    return files


def _tensors(folder: Path) -> Iterator[tuple[str, Path]]:
    """(tensor name, file) of every weight of a saved model, without loading any."""
    for f in _weight_files(folder):
        with safe_open(str(f), "pt") as sf:
            for name in sf.keys():
                yield name, f


def _read(file: Path, name: str) -> torch.Tensor:
    with safe_open(str(file), "pt") as sf:
        return sf.get_tensor(name)


def model_identity(folder: Path) -> dict[str, Any]:
    """What must match between a vector's base and the model it is applied to."""
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise SkillError(f"{folder}: no config.json (expected a model folder)")
    cfg = json.loads(cfg_file.read_text())
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "intermediate_size", "vocab_size")
    ident = {k: cfg.get(k) for k in keys}
    ident["arch_hash"] = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    return ident


# ---------------------------------------------------------------- writing vectors


class _ShardWriter:
    """Collects tensors and writes a safetensors shard whenever SHARD_BYTES are buffered."""

    def __init__(self, out: Path, prefix: str = "vector"):
        self.out, self.prefix, self.buf, self.size, self.n = out, prefix, {}, 0, 0
        self.index: dict[str, str] = {}

    def add(self, name: str, t: torch.Tensor) -> None:
        self.buf[name] = t.contiguous()
        self.size += t.numel() * t.element_size()
        if self.size >= SHARD_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        fname = f"{self.prefix}-{self.n:05d}.safetensors"
        save_file(self.buf, str(self.out / fname))
        self.index.update({k: fname for k in self.buf})
        self.buf, self.size, self.n = {}, 0, self.n + 1


def _tmp_for(out: Path) -> Path:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _finish(tmp: Path, out: Path) -> None:
    """Atomic: the output folder appears complete or not at all."""
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def extract(base: str | Path, tuned: str | Path, out: str | Path, *,
            source_recipe: str | None = None) -> dict[str, Any]:
    """Write the vector tuned - base. `tuned` is a full model folder, or a peft LoRA
    adapter folder (its delta, B @ A scaled, is kept low-rank)."""
    base, tuned, out = Path(base), Path(tuned), Path(out)
    factors = list(_lora_factors(tuned)) if (tuned / "adapter_config.json").is_file() else None
    tmp = _tmp_for(out)  # after the adapter's config was checked: a refusal leaves nothing
    writer = _ShardWriter(tmp)
    entries: dict[str, dict[str, Any]] = {}
    if factors is not None:
        kind = "lora"
        for module, a, b, scaling in factors:
            writer.add(module + ".lora_A", a)
            writer.add(module + ".lora_B", (b * scaling))
            delta = (b.double() * scaling) @ a.double()  # one module at a time, for its norm
            entries[module + ".weight"] = {"shape": list(delta.shape), "rank": a.shape[0],
                                           "scaling": scaling, "norm": float(delta.norm())}
    else:
        kind = "full"
        base_files = dict(_tensors(base))
        for name, f in _tensors(tuned):
            if name not in base_files:
                raise SkillError(f"{tuned}: tensor {name!r} has no counterpart in {base}")
            t, b0 = _read(f, name), _read(base_files[name], name)
            if t.shape != b0.shape:
                raise SkillError(f"{name}: shape {tuple(t.shape)} in {tuned} vs {tuple(b0.shape)} in {base}")
            wide = _WIDER.get(t.dtype, torch.float64)
            delta = t.to(wide) - b0.to(wide)
            writer.add(name, delta)
            entries[name] = {"shape": list(t.shape), "model_dtype": str(t.dtype).removeprefix("torch."),
                             "norm": float(delta.norm())}
    writer.flush()
    manifest = {"kind": kind, "base": str(base), "base_identity": model_identity(base),
                "tuned": str(tuned), "source_recipe": source_recipe, "tensors": entries,
                "files": writer.index}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _finish(tmp, out)
    return manifest


# adapter_config.json fields whose adapters are not base + scaling * B @ A per module: refused
# by name rather than extracted wrong
_LORA_REFUSED = {
    "use_dora": "DoRA rescales every column by a learned magnitude, so its delta is not B @ A",
    "fan_in_fan_out": "the base weights are stored transposed (Conv1D)",
    "lora_bias": "the adapter also trains a bias on lora_B",
    "modules_to_save": "whole modules were trained and saved next to the adapter",
    "layer_replication": "layers of the base model are replicated",
    "target_parameters": "the adapter targets parameters, not modules",
    "trainable_token_indices": "embedding rows were trained and saved next to the adapter",
}
_LORA_INITS_MOVING_BASE = ("pissa", "olora", "corda", "loftq", "lora_ga")


def _check_adapter_config(adapter: Path, cfg: dict[str, Any]) -> None:
    for field, why in _LORA_REFUSED.items():
        if cfg.get(field):
            raise SkillError(f"{adapter}: adapter_config.json sets {field}={cfg[field]!r}: {why}, which "
                             "a skill vector cannot hold as LoRA factors; merge the adapter into its "
                             "base (`rlreason skill merge-adapter`) and extract from the merged model "
                             "folder")
    init = cfg.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_LORA_INITS_MOVING_BASE):
        raise SkillError(f"{adapter}: adapter_config.json sets init_lora_weights={init!r}: that "
                         "initialisation changes the base weights, so B @ A is not the delta from "
                         "the base folder; extract from a merged model folder instead")


def _pattern_key(patterns: list[str], module: str) -> str | None:
    """The rank_pattern / alpha_pattern key that applies to `module`, as peft matches it."""
    try:
        from peft.utils.other import get_pattern_key  # lazily: peft is heavy; ImportError falls back below

        key = get_pattern_key(patterns, module)
        return key if key in patterns else None
    except ImportError:  # peft's rule (0.14+): the key matches the end of the module path
        return next((k for k in patterns if re.match(rf"(.*\.)?({k})$", module)), None)


def _lora_factors(adapter: Path) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, float]]:
    """(module name in the base model, A [r, in], B [out, r], scaling) of a peft adapter;
    the scaling is per module (rank_pattern, alpha_pattern, use_rslora, as peft sets it)."""
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise SkillError(f"{adapter}: adapter_config.json peft_type {cfg['peft_type']!r}; only LoRA "
                         "adapters can be extracted (merge it into its base and extract from that)")
    _check_adapter_config(adapter, cfg)
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise SkillError(f"{adapter}: no adapter_model.safetensors (save the adapter with safetensors)")
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    sd = load_file(str(weights))  # adapters are small
    used: set[str] = set()
    for key, a in sd.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removesuffix(".lora_A.weight").removeprefix("base_model.model.")
        b_key = key.removesuffix(".lora_A.weight") + ".lora_B.weight"
        if b_key not in sd:
            raise SkillError(f"{adapter}: {key} has no {b_key}")
        used.update((key, b_key))
        rk, ak = _pattern_key(list(rank_pattern), module), _pattern_key(list(alpha_pattern), module)
        r = rank_pattern[rk] if rk is not None else cfg["r"]
        alpha = alpha_pattern[ak] if ak is not None else cfg.get("lora_alpha", cfg["r"])
        if a.shape[0] != r:
            raise SkillError(f"{adapter}: {module} has rank {a.shape[0]} but adapter_config.json "
                             f"(r, rank_pattern) gives {r}")
        scaling = alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r
        yield module, a.float(), sd[b_key].float(), scaling
    other = sorted(set(sd) - used)
    if other:  # DoRA magnitudes, embedding factors, biases, saved modules: not B @ A
        raise SkillError(f"{adapter}: adapter tensors that are not lora_A/lora_B pairs of a "
                         f"linear module: {other[:3]}{' ...' if len(other) > 3 else ''}; a skill "
                         "vector cannot hold them as LoRA factors (merge the adapter into its base "
                         "with `rlreason skill merge-adapter` and extract from the merged folder)")


def merge_adapter(adapter: str | Path, out: str | Path, *, base: str | Path | None = None,
                  vectors: list[tuple[str | Path, float]] | None = None,
                  dtype: torch.dtype | None = None) -> Path:
    """Write base (+ scale * vector for each of `vectors`, in memory, as a recipe's
    `model.skills` is applied before LoRA wraps the model) with the peft adapter merged in
    (merge_and_unload), as a full from_pretrained folder. `base` defaults to the adapter's
    base_model_name_or_path. Holds one model in memory."""
    from peft import PeftModel  # lazily: peft is heavy, needed only to merge an adapter

    adapter, out = Path(adapter), Path(out)
    cfg_file = adapter / "adapter_config.json"
    if not cfg_file.is_file():
        raise SkillError(f"{adapter}: no adapter_config.json (expected a peft LoRA adapter folder)")
    base = base or json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    if not base:
        raise SkillError(f"{adapter}: adapter_config.json names no base_model_name_or_path; give the base")
    model = AutoModelForCausalLM.from_pretrained(str(base), **({"dtype": dtype} if dtype else {}))
    for path, scale in vectors or []:
        apply_in_memory(model, path, scale)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tmp = _tmp_for(out)
    model.save_pretrained(tmp)
    del model
    for src in (adapter, Path(base)):  # tokenizer and generation files the save did not write
        if not src.is_dir():
            continue
        for f in src.iterdir():
            if (f.is_file() and not (tmp / f.name).exists() and not f.name.startswith("adapter_")
                    and f.suffix not in (".safetensors", ".bin", ".pt", ".pth")
                    and not f.name.endswith(".index.json") and f.name != "README.md"):
                shutil.copy2(f, tmp / f.name)
    _finish(tmp, out)
    return out


# ---------------------------------------------------------------- reading vectors


def load_manifest(vector: str | Path) -> dict[str, Any]:
    path = Path(vector) / MANIFEST
    if not path.is_file():
        raise SkillError(f"{vector}: no {MANIFEST} (expected a folder written by `rlreason skill extract`)")
    return json.loads(path.read_text())


def _delta(vector: Path, m: dict[str, Any], name: str) -> torch.Tensor:
    """The dense delta of one model tensor (a LoRA module's B @ A formed here)."""
    if m["kind"] == "lora":
        module = name.removesuffix(".weight")
        a = _read(vector / m["files"][module + ".lora_A"], module + ".lora_A")
        b = _read(vector / m["files"][module + ".lora_B"], module + ".lora_B")
        return b.double() @ a.double()
    return _read(vector / m["files"][name], name)


def vector_deltas(vector: str | Path, modules: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(model tensor name, dense delta) one at a time; `modules` keeps names containing any
    of the given substrings (e.g. "self_attn", "mlp", "layers.3.")."""
    vector = Path(vector)
    m = load_manifest(vector)
    for name in m["tensors"]:
        if modules and not any(s in name for s in modules):
            continue
        yield name, _delta(vector, m, name)


def check_compatible(manifest: dict[str, Any], model: Path) -> None:
    want, have = manifest["base_identity"], model_identity(model)
    diff = {k: (want[k], have[k]) for k in want if k != "arch_hash" and want[k] != have[k]}
    if diff:
        raise SkillError(f"{model} does not match the vector's base {manifest['base']}: "
                         + ", ".join(f"{k} {a} (vector) vs {b} (model)" for k, (a, b) in diff.items()))


# ---------------------------------------------------------------- applying


def apply(model: str | Path, vector: str | Path, out: str | Path, *, scale: float = 1.0,
          modules: list[str] | None = None, base_model: str | Path | None = None) -> Path:
    """Write model + scale * vector as a from_pretrained folder, shard by shard. `model` may
    be a LoRA adapter folder: it is merged into its base (`base_model`, default the adapter's
    base_model_name_or_path) first, in a scratch folder next to `out`."""
    model, out = Path(model), Path(out)
    if (model / "adapter_config.json").is_file():
        load_manifest(vector)  # a bad vector fails before the merge
        merged = merge_adapter(model, out.with_name(out.name + ".merged-base"), base=base_model)
        try:
            return apply(merged, vector, out, scale=scale, modules=modules)
        finally:
            shutil.rmtree(merged, ignore_errors=True)
    manifest = load_manifest(vector)
    check_compatible(manifest, model)
    names = [n for n in manifest["tensors"] if not modules or any(s in n for s in modules)]
    shapes = {n: e["shape"] for n, e in manifest["tensors"].items()}
    wanted = set(names)
    tmp = _tmp_for(out)
    for f in model.iterdir():  # config, tokenizer, generation config, shard index
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy2(f, tmp / f.name)
    seen = set()
    for f in _weight_files(model):
        shard: dict[str, torch.Tensor] = {}
        with safe_open(str(f), "pt") as sf:
            meta = sf.metadata()
            for name in sf.keys():
                t = sf.get_tensor(name)
                if name in wanted:
                    if list(t.shape) != shapes[name]:
                        raise SkillError(f"{name}: model shape {tuple(t.shape)} vs vector {shapes[name]}")
                    d = _delta(Path(vector), manifest, name)
                    t = (t.to(d.dtype) + scale * d).to(t.dtype)
                    seen.add(name)
                shard[name] = t
        save_file(shard, str(tmp / f.name), metadata=meta)
        del shard
    missing = wanted - seen
    if missing:
        raise SkillError(f"{model}: no tensor for vector entries {sorted(missing)[:5]}")
    _finish(tmp, out)
    return out


def apply_in_memory(model: torch.nn.Module, vector: str | Path, scale: float = 1.0,
                    modules: list[str] | None = None) -> int:
    """model.param += scale * delta for every vector tensor (for `eval --skill` and recipe
    skill lists: a sweep over scales writes nothing to disk). Returns tensors changed."""
    params = dict(model.named_parameters())
    n = 0
    with torch.no_grad():
        for name, d in vector_deltas(vector, modules):
            p = params.get(name)
            if p is None:
                p = params.get("base_model.model." + name)
            if p is None:
                raise SkillError(f"model has no parameter {name!r} (vector {vector})")
            if tuple(p.shape) != tuple(d.shape):
                raise SkillError(f"{name}: model shape {tuple(p.shape)} vs vector {tuple(d.shape)}")
            p.copy_((p.to(d.dtype) + scale * d.to(p.device)).to(p.dtype))
            n += 1
    return n


# ---------------------------------------------------------------- merging and inspecting


def merge(vectors: list[str | Path], out: str | Path, *, weights: list[float] | None = None,
          method: str = "sum", density: float = 0.2) -> dict[str, Any]:
    """Weighted sum of vectors, or TIES (trim to the top `density` magnitudes per tensor,
    elect each entry's sign by total mass, average the agreeing entries)."""
    if len(vectors) < 1:
        raise SkillError("merge: give at least one vector")
    weights = weights or [1.0] * len(vectors)
    if len(weights) != len(vectors):
        raise SkillError(f"merge: {len(weights)} weights for {len(vectors)} vectors")
    manifests = [load_manifest(v) for v in vectors]
    ids = {m["base_identity"]["arch_hash"] for m in manifests}
    if len(ids) > 1:
        raise SkillError("merge: the vectors come from different base architectures")
    names = list(manifests[0]["tensors"])
    for v, m in zip(vectors, manifests):
        if set(m["tensors"]) != set(names):
            raise SkillError(f"merge: {v} covers different tensors than {vectors[0]}")
    out = Path(out)
    tmp = _tmp_for(out)
    writer = _ShardWriter(tmp)
    entries = {}
    for name in names:
        ds = [w * _delta(Path(v), m, name) for v, m, w in zip(vectors, manifests, weights)]
        merged = _ties(ds, density) if method == "ties" else torch.stack(ds).sum(0)
        writer.add(name, merged)
        entries[name] = {"shape": list(merged.shape), "norm": float(merged.norm())}
    writer.flush()
    manifest = {"kind": "full", "base": manifests[0]["base"],
                "base_identity": manifests[0]["base_identity"], "merged_from": [str(v) for v in vectors],
                "weights": weights, "method": method, "tensors": entries, "files": writer.index}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _finish(tmp, out)
    return manifest


def _ties(ds: list[torch.Tensor], density: float) -> torch.Tensor:
    trimmed = []
    for d in ds:
        k = max(1, int(d.numel() * density))
        thresh = d.abs().flatten().kthvalue(d.numel() - k + 1).values
        trimmed.append(torch.where(d.abs() >= thresh, d, torch.zeros_like(d)))
    stack = torch.stack(trimmed)
    sign = torch.sign(stack.sum(0))
    agree = (torch.sign(stack) == sign) & (stack != 0)
    count = agree.sum(0).clamp(min=1)
    return (stack * agree).sum(0) / count


def inspect(vector: str | Path, other: str | Path | None = None) -> dict[str, Any]:
    """Norm per layer (and per tensor); with `other`, the cosine between the two vectors."""
    m = load_manifest(vector)
    per_layer: dict[str, float] = {}
    total = 0.0
    dot = norm_a = norm_b = 0.0
    om = load_manifest(other) if other else None
    for name, d in vector_deltas(vector):
        sq = float(d.double().pow(2).sum())
        total += sq
        layer = _layer_of(name)
        per_layer[layer] = per_layer.get(layer, 0.0) + sq
        if om is not None and name in om["tensors"]:
            e = _delta(Path(other), om, name)
            dot += float((d.double() * e.double()).sum())
            norm_a += sq
            norm_b += float(e.double().pow(2).sum())
    out: dict[str, Any] = {"kind": m["kind"], "tensors": len(m["tensors"]), "norm": total ** 0.5,
                           "norm_per_layer": {k: v ** 0.5 for k, v in per_layer.items()}}
    if other:
        out["cosine"] = dot / max((norm_a * norm_b) ** 0.5, 1e-30)
    return out


def _layer_of(name: str) -> str:
    parts = name.split(".")
    if "layers" in parts:
        i = parts.index("layers")
        return ".".join(parts[: i + 2])
    return parts[-2] if len(parts) > 1 else name
