"""What every tiny builder shares: the word corpus its tokenizers learn, random weights from a local
generator (the global RNG is left untouched), and state dicts ready for ``safetensors``."""

from __future__ import annotations

import torch

CORPUS = """\
Waves break on pebbles and pull back with a hiss. Wind moves over the dunes and through dry grass.
A wooden door creaks open, then footsteps on gravel come closer and stop. A dog barks twice far away.
Rain starts as a few heavy drops on a tin roof, then a steady downpour drums on the metal.
Thunder rolls in the distance; a second crack of thunder is close and sharp. Gusts rattle the shutters.
A ship's bell rings slowly in the harbor. Ropes creak against wooden posts, water laps at the hull.
Seagulls cry overhead, their calls echo over the water. A foghorn sounds low and long.
A kettle starts to whistle on the stove, a cup clinks on a saucer, a spoon stirs tea.
Birds sing at dawn in a forest; leaves rustle as a small animal runs through the undergrowth.
A car engine starts, idles, then drives away on a wet road. Tires hiss on the asphalt.
Crowd murmur in a busy market, a vendor calls out, coins drop into a metal tray.
A clock ticks in a quiet room. A page turns. A chair scrapes on a wooden floor.
Footsteps echo in a stone corridor, a heavy iron gate slams shut, a key turns in the lock.
Fire crackles in a fireplace, logs shift and settle, sparks pop.
A train approaches, its horn blows, wheels clatter over the rails and fade into the distance.
Heavy rain on leaves, a stream rushes over rocks, frogs croak near the pond at night.
Church bells ring across the valley; sheep bleat on the hillside; a tractor rumbles past.
A glass shatters on a tiled floor. Someone gasps. Running footsteps on stairs.
Soft piano notes drift from an open window while distant traffic hums.
The storm passes, the rain stops, water drips from the gutters, and the gulls return.
calm, tense, ominous, peaceful, joyful, melancholic, mysterious, dramatic, hopeful, eerie
The story starts quiet, builds to a storm, and ends in calm. Each event is one clear sound.
{"reasoning": "A calm shore, a visitor arrives, then leaves.", "tone": "calm", "events": [
{"caption": "waves break on pebbles, wind over the shore", "duration_s": 8, "tone": "calm"},
{"caption": "a wooden door creaks open, then footsteps on gravel", "duration_s": 5, "tone": "curious"}]}
{"reasoning": "Rain builds into a storm and fades.", "tone": "tense", "events": [
{"caption": "light rain on a tin roof", "duration_s": 10, "tone": "quiet"},
{"caption": "thunder rolls and heavy rain pours", "duration_s": 12, "tone": "tense"},
{"caption": "water drips from gutters as birds sing", "duration_s": 9, "tone": "hopeful"}]}
You plan a story as a sequence of sound events. Captions describe what is heard, not what happens.
Answer with JSON only. The durations add up to the total length of the story in seconds.
A helicopter circles above the city; sirens wail and a police radio crackles with static.
Children laugh on a playground, a swing squeaks, a ball bounces on concrete and rolls away.
An owl hoots in the dark woods, crickets chirp, a branch snaps under a heavy boot.
Keyboard keys clatter in an office, a printer whirs, a telephone rings three times.
A waterfall roars into a deep pool; spray hisses on mossy stones below the cliff.
Horses gallop across a field, hooves thunder on the dry earth, a rider shouts.
The elevator dings, doors slide open, muffled music plays inside the empty lobby.
Snow crunches under boots, a sled scrapes over ice, wind howls between frozen pines.
A blacksmith hammers hot iron on an anvil; metal rings, steam hisses in a water barrel.
An old radio tunes between stations, static and whistles, then a faint voice and a song.
Distant explosions thud, debris rattles down, then an eerie silence with a low drone.
Bees buzz among flowers in a summer garden, a lawnmower hums two houses away.
A submarine sonar pings in deep water, hull groans under pressure, bubbles rise.
A spaceship hatch hisses open, servos whine, an alarm beeps in a steady rhythm.
Market stalls close at dusk: shutters roll down, carts squeak, pigeons flutter up.
The river flows under the bridge, a rowing boat knocks against the pier, oars splash.
Pouring coffee, a microwave beeps, toast pops up, a radio talks softly in the kitchen.
A cat purrs on a windowsill while raindrops tap on the glass and a heater ticks.
Marching drums and brass in a parade, confetti cannons pop, the crowd cheers and claps.
A hospital monitor beeps, a cart rolls down the hallway, a door closes with a soft click.
A mine cart rattles along old tracks, water drips in a cavern, a lantern creaks on a hook.
Sand blows across the desert, a camel grunts, tent canvas flaps in the hot wind.
Rules: durations in whole seconds; tone in one or two words; at most a few events per story.
Reasoning explains the arc of the story and why each sound was chosen, in one or two sentences.
"""




def fill_random(model: torch.nn.Module, seed: int, gain: float) -> None:
    """Overwrite every parameter from a local generator: norms at 1, the rest normal(0, gain / sqrt(fan_in))."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "norm" in name:
                param.fill_(1.0)
            else:
                fan_in = param.shape[-1] if param.dim() > 1 else 1
                param.copy_(torch.randn(param.shape, generator=generator) * (gain / fan_in**0.5))


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple

def plain_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in module.state_dict().items()}

