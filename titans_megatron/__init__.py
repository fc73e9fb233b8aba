"""The Titans model on Megatron-core: config and presets, memory mixer, attention core, layer specs."""
