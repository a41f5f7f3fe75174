"""A tiny Stable Diffusion pipeline folder with random weights, written locally (no hub access).

Layout as ``StableDiffusionPipeline.save_pretrained`` writes it (``model_index.json``, ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``), so the model wrapper loads it exactly as it loads a
downloaded SD 1.5 / 2.1 snapshot. Sizes: UNet (32, 64) channels, one layer per block, cross-attention 32;
VAE (32, 64) channels (down-sampling factor 2), 4 latent channels; CLIP text model with 2 layers of width 32
and a 16-token context; a byte-free BPE tokenizer over printable ASCII written here; SD's scaled-linear
β schedule (0.00085 → 0.012, 1000 steps).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CONTEXT = 16
TINY_VAE_FACTOR = 2
SD_BETA_START = 0.00085
SD_BETA_END = 0.012


def write_tiny_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """A CLIP BPE vocabulary (printable ASCII, word-final ``</w>`` forms, one merge) and its merges file."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(i) for i in range(33, 127)]
    tokens = chars + [c + "</w>" for c in chars] + ["an", "an</w>", "<|startoftext|>", "<|endoftext|>"]
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}))
    merges_file.write_text("#version: 0.2\na n\na n</w>\n")
    return vocab_file, merges_file


def build_tiny_sd(folder: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Writes the tiny pipeline into ``folder`` and returns it. Weights are drawn from ``seed`` (global RNG
    forked, so the caller's state is untouched)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab_file, merges_file = write_tiny_tokenizer_files(folder.with_name(folder.name + "_tokenizer_files"))
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=TINY_CONTEXT)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            sample_size=16, scaling_factor=0.18215)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=TINY_CONTEXT, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=SD_BETA_START, beta_end=SD_BETA_END, beta_schedule="scaled_linear",
                              prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder
