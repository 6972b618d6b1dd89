"""ULMR: rewritten instructions, negative responses, fine-tuning, parameter averaging (DESIGN 4)."""
