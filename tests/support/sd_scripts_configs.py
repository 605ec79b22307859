"""Realistic sd-scripts TOML files (train_network.py --config_file / --dataset_config), as people write them
after sd-scripts' docs/config_README and as kohya_ss writes them for sd-scripts."""

from __future__ import annotations

# An SD1.5 character LoRA in sections (sd-scripts ignores the section names): the guide's settings.
SD15_LORA_TOML = """\
[model_arguments]
pretrained_model_name_or_path = "/models/v1-5-pruned-emaonly.safetensors"
v2 = false
v_parameterization = false

[dataset_arguments]
train_data_dir = "/data/lisabp/img"
reg_data_dir = "/data/lisabp/reg"
resolution = "512,512"
enable_bucket = true
min_bucket_reso = 256
max_bucket_reso = 1024
bucket_reso_steps = 64
caption_extension = ".txt"
shuffle_caption = true
keep_tokens = 1
cache_latents = true

[training_arguments]
output_dir = "/data/lisabp/model"
output_name = "lisabp_v1"
logging_dir = "/data/lisabp/log"
save_precision = "fp16"
save_every_n_epochs = 1
train_batch_size = 2
max_train_epochs = 10
max_train_steps = 1600
xformers = true
mixed_precision = "bf16"
gradient_checkpointing = false
seed = 1234
clip_skip = 2
max_data_loader_n_workers = 0
persistent_data_loader_workers = false
noise_offset = 0.05
min_snr_gamma = 5
prior_loss_weight = 1.0
save_model_as = "safetensors"
log_with = "tensorboard"

[optimizer_arguments]
optimizer_type = "AdamW8bit"
learning_rate = 1e-4
unet_lr = 1e-4
text_encoder_lr = 5e-5
lr_scheduler = "cosine"
lr_warmup_steps = 0.1
optimizer_args = ["weight_decay=0.01", "betas=0.9,0.999"]
max_grad_norm = 1.0

[additional_network_arguments]
network_module = "networks.lora"
network_dim = 128
network_alpha = 64
network_train_unet_only = false
no_metadata = false
"""

# An SDXL LoCon: flat keys as kohya_ss writes them, conv layers through network_args.
SDXL_LOCON_TOML = """\
pretrained_model_name_or_path = "stabilityai/stable-diffusion-xl-base-1.0"
dataset_config = "/data/ohwx/dataset.toml"
output_dir = "/data/ohwx/out"
output_name = "ohwx_sdxl"
network_module = "networks.lora"
network_dim = 32
network_alpha = 16
network_args = ["conv_dim=16", "conv_alpha=8"]
optimizer_type = "Adafactor"
optimizer_args = ["scale_parameter=False", "relative_step=False", "warmup_init=False"]
learning_rate = 1e-4
unet_lr = 1e-4
text_encoder_lr = [5e-5, 5e-5]
lr_scheduler = "constant_with_warmup"
lr_warmup_steps = 100
max_train_epochs = 8
mixed_precision = "bf16"
save_precision = "bf16"
save_every_n_epochs = 2
save_last_n_epochs = 2
gradient_checkpointing = true
cache_latents = true
cache_latents_to_disk = true
sdpa = true
no_half_vae = true
max_token_length = 225
seed = 42
sample_every_n_epochs = 1
sample_prompts = "/data/ohwx/prompts.txt"
sample_sampler = "euler_a"
metadata_title = "ohwx"
"""

# Two training subsets and a regularization subset; [general] values fall back into the subsets.
DATASET_TOML = """\
[general]
shuffle_caption = true
caption_extension = ".txt"
keep_tokens = 1
flip_aug = false

[[datasets]]
resolution = 1024
batch_size = 4
enable_bucket = true
min_bucket_reso = 512
max_bucket_reso = 2048
bucket_reso_steps = 64

  [[datasets.subsets]]
  image_dir = "/data/ohwx/train/closeups"
  num_repeats = 10
  class_tokens = "ohwx woman"

  [[datasets.subsets]]
  image_dir = "/data/ohwx/train/full_body"
  num_repeats = 5
  class_tokens = "ohwx woman"
  keep_tokens = 1

  [[datasets.subsets]]
  image_dir = "/data/reg/woman"
  is_reg = true
  num_repeats = 1
  class_tokens = "woman"
"""

# One subset: a flat zip with repeats/trigger/class.
SINGLE_SUBSET_TOML = """\
[[datasets]]
resolution = [768, 768]
batch_size = 2

  [[datasets.subsets]]
  image_dir = "C:\\\\train\\\\zkz"
  num_repeats = 6
  class_tokens = "zkz dog"
  flip_aug = true
"""

# FLUX.1 dev: the command of sd-scripts' docs/flux_train_network.md ("4. Running the Training",
# kohya-ss/sd-scripts 48d368f) as a --config_file TOML, its placeholder paths filled in.
FLUX_DOCS_TOML = """\
pretrained_model_name_or_path = "/models/flux1-dev.safetensors"
clip_l = "/models/clip_l.safetensors"
t5xxl = "/models/t5xxl_fp16.safetensors"
ae = "/models/ae.safetensors"
dataset_config = "my_flux_dataset_config.toml"
output_dir = "/data/flux/out"
output_name = "my_flux_lora"
save_model_as = "safetensors"
network_module = "networks.lora_flux"
network_dim = 16
network_alpha = 1
learning_rate = 1e-4
optimizer_type = "AdamW8bit"
lr_scheduler = "constant"
sdpa = true
max_train_epochs = 10
save_every_n_epochs = 1
mixed_precision = "fp16"
gradient_checkpointing = true
guidance_scale = 1.0
timestep_sampling = "flux_shift"
model_prediction_type = "raw"
blocks_to_swap = 18
cache_text_encoder_outputs = true
cache_latents = true
"""

# The docs' dataset example (6.7) with one resolution.
FLUX_DATASET_TOML = """\
[general]
flip_aug = true
color_aug = false
keep_tokens_separator= "|||"
shuffle_caption = false
caption_tag_dropout_rate = 0
caption_extension = ".txt"

[[datasets]]
batch_size = 2
enable_bucket = true
resolution = [1024, 1024]

  [[datasets.subsets]]
  image_dir = "path/to/image/directory"
  num_repeats = 1
"""
