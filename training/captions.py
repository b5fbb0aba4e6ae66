"""Captions for corpus clips, written from what we know made them: sample-library tags and plain sentences.

Each clip gets several phrasings (tags like "cello, A3, sustained, dark, 4s" and AudioCaps-like
sentences like "A cello plays a long low A note.") so a text encoder sees the ways people ask for
the same sound. Words for measurements (brightness, loudness) come from `pipelines.analysis`.
"""

from __future__ import annotations

import re

import numpy as np

from pipelines.analysis import NOTE_NAMES, brightness_word

# The 128 General MIDI programs as a person would name the instrument (not the GM patch names).
GM_NAMES: tuple[str, ...] = (
    "grand piano", "bright piano", "electric grand piano", "honky-tonk piano", "electric piano",
    "FM electric piano", "harpsichord", "clavinet", "celesta", "glockenspiel", "music box", "vibraphone",
    "marimba", "xylophone", "tubular bells", "dulcimer", "organ", "percussive organ", "rock organ",
    "church organ", "reed organ", "accordion", "harmonica", "bandoneon", "nylon-string guitar",
    "acoustic guitar", "jazz guitar", "clean electric guitar", "muted electric guitar", "overdriven guitar",
    "distorted guitar", "guitar harmonics", "upright bass", "electric bass", "picked bass", "fretless bass",
    "slap bass", "slap bass", "synth bass", "synth bass", "violin", "viola", "cello", "double bass",
    "tremolo strings", "pizzicato strings", "harp", "timpani", "string ensemble", "slow strings",
    "synth strings", "synth strings", "choir", "vocal oohs", "synth voice", "orchestra hit", "trumpet",
    "trombone", "tuba", "muted trumpet", "french horn", "brass section", "synth brass", "synth brass",
    "soprano sax", "alto sax", "tenor sax", "baritone sax", "oboe", "english horn", "bassoon", "clarinet",
    "piccolo", "flute", "recorder", "pan flute", "blown bottle", "shakuhachi", "whistle", "ocarina",
    "square lead synth", "sawtooth lead synth", "calliope synth", "chiff lead synth", "charang synth",
    "voice lead synth", "fifths lead synth", "bass and lead synth", "new age pad", "warm pad",
    "polysynth pad", "choir pad", "bowed pad", "metallic pad", "halo pad", "sweep pad", "rain synth",
    "soundtrack synth", "crystal synth", "atmosphere synth", "brightness synth", "goblins synth",
    "echo synth", "sci-fi synth", "sitar", "banjo", "shamisen", "koto", "kalimba", "bagpipes", "fiddle",
    "shehnai", "tinkle bell", "agogo", "steel drums", "woodblock", "taiko drum", "melodic tom",
    "synth drum", "reverse cymbal", "guitar fret noise", "breath noise", "seashore", "bird tweet",
    "telephone ring", "helicopter", "applause", "gunshot",
)  # fmt: skip
assert len(GM_NAMES) == 128

KIT_NAMES = {
    0: "acoustic drum kit", 8: "room drum kit", 16: "power drum kit", 24: "electronic drum kit",
    25: "808 drum machine", 32: "jazz drum kit", 40: "brush kit", 48: "orchestral percussion",
}  # fmt: skip

CHORD_NAMES = {
    "maj": "major",
    "min": "minor",
    "7": "dominant seventh",
    "maj7": "major seventh",
    "min7": "minor seventh",
    "sus4": "sus4",
    "sus2": "sus2",
    "dim": "diminished",
}


PLURAL_NAMES = {
    "tremolo strings",
    "pizzicato strings",
    "slow strings",
    "synth strings",
    "vocal oohs",
    "bagpipes",
    "steel drums",
    "drums",
}
# Programs whose notes last as long as they are held (the rest decay: struck, plucked, hit).
SUSTAINING = (
    set(range(16, 24)) | set(range(40, 45)) | set(range(48, 55)) | set(range(56, 96)) | {109, 110, 111}
)


# Words sample libraries put in file and folder names, and what a caption should say for them.
# Keys of 3+ letters match at the start or end of a name token ("tomh" -> tom, "hhat" -> hi-hat, but not
# "trimo" -> rim); shorter ones must be the whole token ("bd", "sd").
NAME_WORDS = {
    "kick": "kick drum", "bd": "kick drum", "snare": "snare drum", "sd": "snare drum",
    "hihat": "hi-hat", "hat": "hi-hat", "hh": "hi-hat", "tom": "tom drum", "crash": "crash cymbal",
    "ride": "ride cymbal", "cymbal": "cymbal", "clap": "hand clap", "rim": "rimshot", "shaker": "shaker",
    "cowbell": "cowbell", "tamb": "tambourine", "conga": "conga", "bongo": "bongo", "perc": "percussion",
    "bass": "bass", "piano": "piano", "guitar": "guitar", "synth": "synth", "pad": "pad", "lead": "lead",
    "pluck": "pluck", "string": "strings", "vox": "vocal", "vocal": "vocal", "voice": "voice",
    "riser": "riser", "impact": "impact", "whoosh": "whoosh", "drone": "drone", "loop": "loop",
    "fx": "sound effect", "foley": "foley",
}  # fmt: skip


def name_words(path: str) -> list[str]:
    """Caption words found in a file's name and folders, e.g. 'Kicks/BD_hard.wav' -> ['kick drum']."""
    tokens = re.findall(r"[a-z]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", path.rsplit(".", 1)[0]).lower())
    found: list[str] = []
    for token in tokens:
        for key, word in NAME_WORDS.items():
            hit = token == key or (len(key) >= 3 and (token.startswith(key) or token.endswith(key)))
            if hit and word not in found:
                found.append(word)
    return found


def instrument_name(program: int) -> str:
    return GM_NAMES[program]


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" or word[:3].upper() in ("FM ",) else "a"


def subject(name: str) -> tuple[str, str]:
    """("a cello", "plays") or ("synth strings", "play"): a name as the subject of a sentence."""
    if name in PLURAL_NAMES:
        return name, "play"
    return f"{article(name)} {name}", "plays"


def pitch_class(midi: int) -> str:
    return NOTE_NAMES[midi % 12]


def register_word(midi: float) -> str:
    if midi < 40:
        return "very low"
    if midi < 60:
        return "low"
    if midi < 72:
        return "mid"
    if midi < 84:
        return "high"
    return "very high"


def dynamics_words(velocity: float) -> tuple[str, str]:
    """(tag, adverb) for a MIDI velocity, e.g. ("soft", "softly")."""
    if velocity < 50:
        return "soft", "softly"
    if velocity < 95:
        return "medium", "moderately"
    return "loud", "loudly"


def length_tag(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds >= 1.5 else f"{seconds:.1f}s"


def length_words(seconds: float) -> str:
    whole = int(round(seconds))
    return f"{whole} second{'s' if whole != 1 else ''}" if seconds >= 1.5 else "about a second"


def tempo_words(bpm: float) -> str:
    if bpm < 80:
        return "slow"
    if bpm < 115:
        return "relaxed"
    if bpm < 140:
        return "upbeat"
    return "fast"


def _tags(*words: str) -> str:
    return ", ".join(w for w in words if w)


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


# ---------------------------------------------------------------- instruments


def _note_captions(p: dict, seconds: float, bright: str, rng: np.random.Generator) -> list[str]:
    name, midi = p["instrument"], p["midi"]
    dyn, adverb = dynamics_words(p["velocity"])
    held = p["note_seconds"]
    sustains = p["program"] in SUSTAINING
    shape = (
        "short"
        if held < 0.5
        else ("sustained" if sustains and held > 1.5 else ("" if sustains else "decaying"))
    )
    length_adj = "short" if held < 0.5 else ("long" if held > 1.5 and sustains else "")
    who, verb = subject(name)
    return [
        _tags(name, p["note"], shape, bright, length_tag(seconds)),
        _sentence(f"{article(length_adj or name)} {length_adj} {name} note, {p['note']}, played {adverb}"),
        _sentence(
            f"{who} {verb} {article(length_adj or register_word(midi))} {length_adj} "
            f"{register_word(midi)} {pitch_class(midi)} note"
        ),
        _tags(f"{name} one-shot", p["note"], f"{p['f0_hz']:.0f} Hz", dyn, f"{held:.1f}s note"),
        _sentence(f"single {name} note {p['note']}, {bright or 'clean'} tone, {length_words(seconds)}"),
    ]


def _chord_captions(p: dict, seconds: float, bright: str, rng: np.random.Generator) -> list[str]:
    name, key, bpm = p["instrument"], p["key"], p["bpm"]
    chords = p["chords"]
    dyn, adverb = dynamics_words(p["velocity"])
    tempo = f"{bpm:.0f} BPM" if bpm else ""
    if len(chords) == 1:
        chord = chords[0]
        what = f"{chord} chord"
        sentence = f"{' '.join(subject(name))} a {_attack(p)} {chord} chord {adverb}"
        tags = _tags(f"{name} chord", chord, register_word(p["root_midi"]), bright, length_tag(seconds))
    else:
        what = f"chord progression in {key}"
        sentence = f"{' '.join(subject(name))} the chords {', '.join(chords)} at {tempo}"
        tags = _tags(f"{name} chords", key, tempo, bright, length_tag(seconds))
    return [
        tags,
        _sentence(sentence),
        _sentence(f"{name} {what}, {dyn}, {length_words(seconds)}"),
        _tags(name, "chord" if len(chords) == 1 else "chords", key, tempo, dyn),
    ]


def _attack(p: dict) -> str:
    if not p["strum"]:
        return "held"
    return "strummed" if 24 <= p["program"] <= 31 or p["program"] in (104, 105, 106, 107) else "rolled"


def _arpeggio_captions(p: dict, seconds: float, bright: str, rng: np.random.Generator) -> list[str]:
    name, key, bpm = p["instrument"], p["key"], p["bpm"]
    direction = {"up": "rising", "down": "falling", "updown": "rising and falling", "random": "broken"}[
        p["pattern"]
    ]
    return [
        _tags(f"{name} arpeggio", key, f"{bpm:.0f} BPM", bright, length_tag(seconds)),
        _sentence(f"{' '.join(subject(name))} {direction} arpeggios in {key} at {bpm:.0f} BPM"),
        _sentence(f"{tempo_words(bpm)} {direction} {name} arpeggio, {p['subdivision']} notes, {key}"),
        _tags(name, "arpeggiated", p["subdivision"], key, register_word(p["low_midi"]), f"{bpm:.0f} BPM"),
    ]


def _melody_captions(p: dict, seconds: float, bright: str, rng: np.random.Generator) -> list[str]:
    name, key, bpm = p["instrument"], p["key"], p["bpm"]
    mood = "gentle" if p["velocity"] < 60 else ("lively" if bpm >= 110 else "simple")
    meter = p["meter"]
    return [
        _tags(
            f"{name} melody",
            key,
            f"{bpm:.0f} BPM",
            meter if meter != "4/4" else "",
            bright,
            length_tag(seconds),
        ),
        _sentence(f"{' '.join(subject(name))} {article(mood)} {mood} melody in {key}"),
        _sentence(
            f"{tempo_words(bpm)} {name} melody at {bpm:.0f} BPM in {meter} time, {length_words(seconds)}"
        ),
        _tags(
            "solo " + name,
            "melody",
            key,
            register_word(p["low_midi"]) + " register",
            dynamics_words(p["velocity"])[0],
        ),
    ]


def _bassline_captions(p: dict, seconds: float, bright: str, rng: np.random.Generator) -> list[str]:
    name, key, bpm = p["instrument"], p["key"], p["bpm"]
    style = {
        "roots": "steady",
        "octaves": "bouncing octave",
        "walking": "walking",
        "syncopated": "syncopated",
    }[p["style"]]
    line = f"{name} line" if name.endswith("bass") else f"{name} bass line"
    return [
        _tags("bass line", name, key, f"{bpm:.0f} BPM", bright, length_tag(seconds)),
        _sentence(f"{' '.join(subject(name))} {article(style)} {style} bass line in {key} at {bpm:.0f} BPM"),
        _sentence(f"{style} {line}, {tempo_words(bpm)}, {length_words(seconds)}"),
        _tags(name if name.endswith("bass") else f"{name} bass", style, key, f"{bpm:.0f} BPM"),
    ]


def _drum_captions(p: dict, seconds: float, bright: str, rng: np.random.Generator) -> list[str]:
    style, bpm, kit = p["style"], p["bpm"], KIT_NAMES.get(p["kit"], "drum kit")
    bars = p["bars"]
    bar_words = f"{bars} bar{'s' if bars != 1 else ''}"
    fill = " with a fill at the end" if p.get("fill") else ""
    return [
        _tags("drum loop", style, f"{bpm:.0f} BPM", p["meter"], bar_words, bright, length_tag(seconds)),
        _sentence(
            f"{article(style)} {style} drum beat at {bpm:.0f} BPM played on {article(kit)} {kit}{fill}"
        ),
        _sentence(f"{tempo_words(bpm)} {style} groove, {p['meter']} time, {bar_words}"),
        _tags("drums", kit, style, f"{bpm:.0f} BPM", "swing" if p.get("swing", 0) > 0.05 else "straight"),
        _sentence(f"drums play {article(tempo_words(bpm))} {tempo_words(bpm)} {style} pattern"),
    ]


# ---------------------------------------------------------------- sound design


def _fx_words(p: dict) -> tuple[list[str], str]:
    """(tag words, sentence) for a procedural sound's params."""
    family = p["family"]
    if family == "riser":
        kind = "synth and noise" if p["tone"] else "noise"
        return ["riser", kind, "build-up", "tension"], f"a {kind} riser builds up tension"
    if family == "impact":
        kind = "cinematic boom" if p["sub_hz"] < 55 else "heavy hit"
        return [
            "impact",
            kind,
            "hit",
            "trailer",
        ], f"a {kind} with a {'long' if p['tail_s'] > 2 else 'short'} tail"
    if family == "whoosh":
        way = "left to right" if p["pan_from"] < p["pan_to"] else "right to left"
        return ["whoosh", "swoosh", "transition", f"passes {way}"], f"something whooshes past from {way}"
    if family == "drone":
        root = pitch_class(p["midi"])
        return [
            "drone",
            "ambient",
            f"{root} drone",
            "pad",
        ], f"a {register_word(p['midi'])} {p['chord']} drone on {root} slowly evolves"
    if family == "zap":
        shots = "laser shot" if p["shots"] == 1 else f"{p['shots']} laser shots"
        return [
            "laser",
            "zap",
            "sci-fi",
            "pew",
        ], f"{shots} zap{'s' if p['shots'] == 1 else ''} with a falling pitch"
    if family == "wind":
        kind = "howling" if p["howl"] > 0.6 else ("gusty" if p["gustiness"] > 0.6 else "steady")
        return ["wind", kind, "weather", "ambience"], f"{kind} wind blows"
    if family == "rain":
        return ["rain", p["intensity"] + " rain", "weather", "ambience"], f"{p['intensity']} rain falls"
    if family == "noise_sweep":
        return (
            ["noise sweep", f"{p['filter']} sweep", p["direction"], f"{p['color']} noise"],
            f"a {p['color']} noise sweep with a {p['filter']} filter moving {p['direction']}",
        )
    if family == "engine":
        verb = {"idle": "idles", "revving": "revs", "accelerating": "accelerates", "slowing": "slows down"}
        return ["engine", p["kind"], p["motion"], "motor"], f"a {p['kind']} engine {verb[p['motion']]}"
    if family == "alarm":
        return ["alarm", p["style"], "siren", "warning"], f"a {p['style']} alarm sounds"
    if family == "bell":
        strikes = {1: "once", 2: "twice"}.get(p["strikes"], "three times")
        return [
            "bell",
            p["material"] + " bell",
            pitch_class(p["midi"]),
            "ring",
        ], f"a {p['material']} bell rings {strikes}"
    if family == "ui_blip":
        return [
            "UI sound",
            p["pattern"],
            "blip",
            "interface",
            "notification",
        ], f"a short {p['pattern']} interface blip"
    if family == "thunder":
        return ["thunder", p["distance"], "storm", "rumble"], f"{p['distance']} thunder rumbles"
    if family == "sub_drop":
        return ["sub drop", "downlifter", "bass drop", "falling"], "a deep sub bass drop falls in pitch"
    if family == "fire":
        return ["fire", p["size"], "crackling", "ambience"], f"a {p['size']} crackles and burns"
    if family == "bubbles":
        return ["bubbles", "water", "underwater", "bubbling"], "water bubbles and gurgles"
    if family == "surf":
        return ["ocean waves", "surf", "sea", "beach"], "waves crash on a beach"
    if family == "glitch":
        return ["glitch", "digital", "stutter", "bitcrushed"], "digital glitches stutter and crackle"
    if family == "heartbeat":
        return [
            "heartbeat",
            f"{p['bpm']:.0f} BPM",
            "pulse",
            "thump",
        ], f"a heart beats at {p['bpm']:.0f} beats per minute"
    if family == "clock":
        return ["clock", "ticking", f"{p['bpm']:.0f} BPM", "tick tock"], "a clock ticks steadily"
    raise AssertionError(f"no caption words for family {family}")


def _fx_captions(p: dict, seconds: float, bright: str, rng: np.random.Generator) -> list[str]:
    words, sentence = _fx_words(p)
    extra = list(rng.permutation(words[1:]))
    return [
        _tags(words[0], *extra[:2], bright, length_tag(seconds)),
        _sentence(sentence),
        _sentence(f"{sentence}, {length_words(seconds)}"),
        _tags(words[0], *words[1:], "sound effect"),
    ]


_CAPTIONERS = {
    "note": _note_captions,
    "chord": _chord_captions,
    "arpeggio": _arpeggio_captions,
    "melody": _melody_captions,
    "bassline": _bassline_captions,
    "drums": _drum_captions,
    "fx": _fx_captions,
}


def captions_for(params: dict, seconds: float, brightness_hz: float, rng: np.random.Generator) -> list[str]:
    """Several phrasings of what the clip is, from its params and its measured brightness."""
    return _CAPTIONERS[params["category"]](params, seconds, brightness_word(brightness_hz), rng)
