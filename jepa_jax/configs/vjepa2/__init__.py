"""V-JEPA 2 (docs/reference.md §9): the pretraining recipe at 16 frames x 256 px (vitl16_256, vith16_256,
vitg16_256), the 64-frame cooldowns started from a pretraining run or a released file (*_cooldown), and the CPU demo.
recipe.py holds what they share."""
