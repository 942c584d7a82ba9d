"""`vigil-export ckpt_path=... out=DIR`: a fine-tuned VQA model out of vigil, as transformers and peft load it.

- LoRA (`model.lora`): `DIR` is a PEFT adapter folder (`adapter_config.json`, `adapter_model.safetensors`) that
  `PeftModel.from_pretrained(base, DIR)` loads onto the base checkpoint it names; with `merge=true` the adapters
  are merged into the base weights (peft's `merge_and_unload`) and `DIR` is a plain checkpoint.
- Without adapters, `DIR` is the fine-tuned model itself.
Every folder also holds the checkpoint's processor (tokenizer, image processor, chat template), so
`AutoModelForImageTextToText.from_pretrained(DIR)` and `AutoProcessor.from_pretrained(DIR)` give the model as
vigil trained and prompted it. The training composition is read back from the checkpoint, as `vigil-eval` does.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra import compose
from omegaconf import DictConfig, OmegaConf
from peft import PeftModel

from vigil.core.checkpoints import load_checkpoint
from vigil.core.config import check_target_arguments
from vigil.core.errors import ConfigError, exit_on_vigil_error
from vigil.core.overrides import checks_command_line
from vigil.core.run import build_module
from vigil.tasks.vqa.model import load_processor
from vigil.train import CONF_DIR

EXPORTABLE_TASKS = ("vqa",)


@checks_command_line(CONF_DIR, "export")
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
@exit_on_vigil_error
def main(cfg: DictConfig) -> None:
    """Rebuild the trained model from its checkpoint and write it to `cfg.out`."""
    written = export(Path(cfg.ckpt_path), Path(cfg.out), cfg.merge, cfg.trust_checkpoint)
    print(f"{written} written to {cfg.out}")


def export(ckpt_path: Path, out: Path, merge: bool = False, trust: bool = False) -> str:
    """Write the checkpoint's model to `out` (adapter folder, merged or full model) with its processor; returns
    what was written."""
    if not ckpt_path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"out={out}: the folder is not empty (choose a new one)")
    checkpoint = load_checkpoint(ckpt_path, trust)
    train_cfg = training_config(ckpt_path, checkpoint)
    module = build_module(train_cfg)
    module.load_state_dict(checkpoint["state_dict"], strict=module.strict_loading)
    model = module.model.model
    if isinstance(model, PeftModel):
        written = "merged model" if merge else "PEFT adapter"
        model = model.merge_and_unload() if merge else model
    else:
        written = "fine-tuned model (no LoRA adapters to merge)"
    model.save_pretrained(out)
    data = train_cfg.data
    kwargs = OmegaConf.to_container(data.processor_kwargs)
    tiny = OmegaConf.to_container(data.tiny) if data.tiny is not None else None
    load_processor(data.checkpoint, Path(data.cache_dir), tiny, kwargs).save_pretrained(out)
    return written


def training_config(ckpt_path: Path, checkpoint: dict) -> DictConfig:
    """The composition the checkpoint was trained with (its stored overrides), checked before anything loads."""
    stored = checkpoint.get("vigil")
    if stored is None:
        raise ConfigError(f"{ckpt_path}: not a vigil checkpoint (no stored composition)")
    overrides = [o for o in stored["overrides"] if not o.startswith(("resume=", "ckpt_path="))]
    cfg = compose(config_name="train", overrides=overrides)
    if cfg.task.name not in EXPORTABLE_TASKS:
        raise ConfigError(f"{ckpt_path}: task={cfg.task.name} has no export; valid: {', '.join(EXPORTABLE_TASKS)}")
    check_target_arguments(cfg)
    return cfg


if __name__ == "__main__":
    main()
