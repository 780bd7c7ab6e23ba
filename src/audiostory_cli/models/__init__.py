"""Model bundles: checkpoints that bring more than a decoder (the released AudioStory checkpoint)."""
