"""The released AudioStory checkpoint as one bundle: config, protocol, grammar, planner, fusion, peft keys, load."""
