"""The tiny model the reliability scripts train (bad_inputs.py, fault_soak.py): a ~50k-parameter model on
16x16 phantoms that trains in seconds on a CPU: the point there is the state machine, not the model."""

TINY = [
    "data.name=phantom", "data.resolution=16", "data.phantom_items=48",
    "model.unet.block_out_channels=[16,32]", "model.unet.attention_levels=[false,true]",
    "model.unet.norm_num_groups=8", "model.unet.attention_head_dim=8",
    "model.text.hidden_size=32", "model.text.num_layers=1", "model.text.num_heads=2", "model.text.max_length=12",
    "model.text.vocab_size=600", "train.batch_size=8", "train.warmup_steps=1", "train.progress=false",
    "train.log_every=5", "sample.per_class=2", "sample.steps=3",
]
# three unpaired 'acquisition domains' of the phantom (synth.data.phantom_domains) for a tiny bridge
BRIDGE = ["labels.domains=[clean,dim,inverted]", "model.unet.attention_levels=[false,false]", "train.steps=10",
          "train.checkpoint_every=10"]
