"""Regenerate the small byte-level BPE tokenizer shipped in ``processing/tokenizer/``.

Usage::

    python processing/build_tokenizer.py            # writes processing/tokenizer/
    python processing/build_tokenizer.py --out DIR  # writes somewhere else

The training corpus is produced here from fixed templates with a seeded random generator, so running the
script twice gives byte-identical files. The tokenizer is a byte-level BPE (ByteLevel pre-tokenizer and
decoder): every string in every language and script encodes without unknown tokens and decodes back exactly.

Special token ids are fixed by their order in ``SPECIAL_TOKENS``:

    <pad>=0  <s>=1  </s>=2  <unk>=3  <visual>=4  <|endofchunk|>=5

This module imports only the standard library, ``tokenizers`` and ``transformers``; it is a script, not part of
the runtime API.
"""

from __future__ import annotations

import argparse
import os
import random

VOCAB_SIZE = 2048

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
MEDIA_TOKEN = "<visual>"
ENDOFCHUNK_TOKEN = "<|endofchunk|>"
# order == token id
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, MEDIA_TOKEN, ENDOFCHUNK_TOKEN]

DEFAULT_OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokenizer")

# ---------------------------------------------------------------------------------------------------------------
# Caption vocabulary: these words must end up as single tokens (with and without a leading space).
# ---------------------------------------------------------------------------------------------------------------
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray", "pink", "brown", "cyan"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "ring"]
SIZES = ["small", "medium", "large", "big", "tiny"]
POSITIONS = ["left", "right", "top", "bottom", "center", "upper", "lower", "middle", "corner"]
COUNTS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
DIGITS = [str(i) for i in range(10)]
VIDEO_WORDS = [
    "moves", "moving", "up", "down", "appears", "disappears", "grows", "shrinks", "rotates", "stays",
    "first", "then", "after", "before", "while", "frame",
]  # fmt: skip
QUESTION_WORDS = [
    "what", "which", "how", "many", "where", "is", "are", "there", "color", "shape", "size",
    "the", "a", "an", "of", "on", "in", "and", "with", "background",
]  # fmt: skip
CAPTION_VOCABULARY = COLOURS + SHAPES + SIZES + POSITIONS + COUNTS + DIGITS + VIDEO_WORDS + QUESTION_WORDS

# ---------------------------------------------------------------------------------------------------------------
# General English vocabulary used by the sentence templates.
# ---------------------------------------------------------------------------------------------------------------
NOUNS = """
picture photo image video scene camera light shadow window door table chair floor wall room house garden street
road city village river lake ocean mountain forest tree flower grass leaf stone rock sand water sky cloud sun moon
rain snow wind morning evening night day week year child person people woman man girl boy dog cat bird horse fish
cow sheep car bus train bicycle boat plane book paper letter pen pencil computer screen phone picture painting
kitchen plate cup bottle glass bowl spoon knife fork bread apple banana orange cake coffee tea milk music song
story question answer word sentence language number line point edge side part group object shape pattern color
surface texture detail model system method result example problem reason idea moment place time world country
market shop school teacher student friend family game ball team player field park bridge tower building station
""".split()
VERBS_PAST = """
walked looked opened closed carried painted watched noticed found placed moved turned pulled pushed lifted dropped
built drew wrote read counted described answered asked showed followed crossed reached started finished changed
""".split()
VERBS_PRESENT = """
walks looks opens closes carries paints watches notices finds places moves turns pulls pushes lifts drops builds
draws writes reads counts describes answers asks shows follows crosses reaches starts finishes changes sits stands
runs jumps flies swims shines falls rises floats waits holds points covers fills touches
""".split()
ADJECTIVES = """
bright dark old new quiet loud warm cold soft hard round flat smooth rough clean empty full simple clear heavy light
quick slow happy calm busy long short wide narrow high deep early late beautiful strange plain striped dotted solid
""".split()
ADVERBS = """
slowly quickly quietly carefully suddenly gently finally almost always often never sometimes clearly nearly already
""".split()
EXTRA_WORDS = """
about above accept across action activity actually add address admit adult affect afraid again against age agency
agent agree ahead allow alone along already also among amount analysis animal another answer anyone anything appear
apply approach area argue arm army around arrive article artist assume attack attention audience author available
avoid away baby bag bank bar base beat become bed begin behavior believe benefit best better beyond bill billion
blood board body born both box break bring brother budget business buy call campaign cancer candidate capital card
care career case catch cause cell central century certain chance character charge check choice choose church citizen
claim class close coach collection college come commercial common community company compare concern condition
conference congress consider consumer contain continue control cost could couple course court cover create crime
cultural culture current customer cut damage data daughter dead deal death debate decade decide decision defense
degree democrat describe design despite determine develop difference different difficult dinner direction director
discover discuss disease doctor dream drive drug during each economic economy education effect effort eight either
election else employee end energy enjoy enough enter entire environment especially establish even event ever
everybody evidence exactly executive exist expect experience expert explain eye face fact factor fail fall far fast
father fear federal feel feeling few fight figure final financial fine finger fire firm focus foot force foreign
forget form former forward free friend front fund future general generation get give goal good government great
ground grow growth guess gun hair half hand hang happen have head health hear heart heat help here herself high
himself history hit hold home hope hospital hot hotel hour however huge human hundred husband identify imagine
impact important improve include including increase indeed indicate individual industry information inside instead
institution interest international interview investment involve issue item itself job join just keep key kid kill
kind know knowledge land last later laugh law lawyer lay lead leader learn least leave legal less level life likely
list listen little live local lose loss lot love machine magazine main maintain major majority make manage management
manager material matter maybe mean measure media medical meet meeting member memory mention message might military
million mind minute miss mission modern money month mother mouth movement movie much must myself name nation
national natural nature necessary need network never news newspaper next nice nothing notice now occur offer office
officer official oil only open operation opportunity option order organization other others outside own owner page
pain parent partner party pass past patient pay peace perform performance perhaps period personal phone physical
pick piece plan plant play policy political poor popular population position positive possible power practice
prepare present president pressure pretty prevent price private probably process produce product production
professional professor program project property protect prove provide public purpose put quality quite radio raise
range rate rather ready real reality realize really receive recent recently recognize record reduce reflect region
relate relationship religious remain remember remove report represent require research resource respond response
rest return reveal rich risk role rule safe same save say science scientist score season seat second section security
seek seem sell send senior sense series serious serve service set several sexual share she short should shoulder
sign significant similar since sing single sister site situation skill social society soldier some somebody someone
something sometimes son soon sort sound source south southern space speak special specific speech spend sport spring
staff stage state statement stock stop strategy strong structure study stuff style subject success successful such
suggest summer support sure table take talk task tax technology television tell tend term test than thank that their
them themselves theory these they thing think third this those though thought thousand threat through throughout
throw thus today together tonight too total tough toward town trade traditional training travel treat treatment
trial trip trouble true truth try type under understand unit until upon usually value various very victim view
violence visit voice vote wait want war watch way weapon wear weight well west western whatever whether whole whom
whose wife will win wish within without wonder work worker would wrong yard yeah yes yet young your yourself
""".split()

PREPOSITIONS = [
    "on", "in", "under", "over", "near", "behind", "beside", "between", "above", "below", "across", "around",
]  # fmt: skip
CONNECTORS = ["and", "but", "so", "because", "while", "after", "before", "when", "then", "although"]

PASSAGE = """
A picture can tell a long story in a single moment. When we look at an image, we first notice the largest shapes and
the brightest colors, and only then do we search for the small details hidden in the corners. A video adds time to
the picture: objects appear, move across the frame, grow, shrink, rotate and finally disappear. To describe what
happens, we need words for colors, shapes, sizes, positions and counts, and we need words for order in time, such as
first, then, after, before and while.
Language models learn to predict the next word from the words that came before. A vision-language model also sees
pictures and videos, placed between pieces of text, and learns to write captions, to answer questions and to
compare what it sees with what it reads. Each picture is marked in the text by a special placeholder, and each
caption ends with a special marker, so the model knows where one example stops and the next one begins.
Simple synthetic scenes are useful for testing such a model. A scene may contain one red circle on a black
background, or three small blue squares in the upper left corner. In a short video, a yellow star may move from the
left to the right while a green ring stays in the center. Questions about these scenes are easy to write and easy to
check: what color is the circle, how many triangles are there, where is the large hexagon, which shape grows?
""".split("\n")


def _caption_sentences(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        kind = rng.randrange(8)
        c, s, z, p = rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(SIZES), rng.choice(POSITIONS)
        c2, s2 = rng.choice(COLOURS), rng.choice(SHAPES)
        k = rng.choice(COUNTS[1:])
        d = rng.choice(DIGITS)
        if kind == 0:
            out.append(f"a {z} {c} {s} in the {p} of the image on a {c2} background.")
        elif kind == 1:
            out.append(f"{k} {c} {s}s and one {z} {c2} {s2} on a {rng.choice(COLOURS)} background.")
        elif kind == 2:
            out.append(f"the {c} {s} moves {rng.choice(['up', 'down', 'left', 'right'])} and then disappears.")
        elif kind == 3:
            out.append(
                f"first a {c} {s} appears in the {p}, then it "
                f"{rng.choice(['grows', 'shrinks', 'rotates', 'stays'])} while a {c2} {s2} is moving "
                f"{rng.choice(['up', 'down', 'left', 'right'])}."
            )
        elif kind == 4:
            out.append(f"what color is the {s}? {c}. which shape is {c2}? {s2}.")
        elif kind == 5:
            out.append(f"how many {s}s are there? {d}. where is the {c} {s2}? {p} {rng.choice(POSITIONS)}.")
        elif kind == 6:
            out.append(f"is there a {z} {c} {s} in frame {d}? what size is the {s2}? {z}.")
        else:
            out.append(
                f"after frame {d} the {c} {s} grows, before frame {rng.choice(DIGITS)} it is {z}; "
                f"there are {k} shapes with the same color and shape."
            )
    return out


def _english_sentences(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        kind = rng.randrange(8)
        w1, w2, w3 = rng.choice(EXTRA_WORDS), rng.choice(EXTRA_WORDS), rng.choice(EXTRA_WORDS)
        a1, a2 = rng.choice(ADJECTIVES), rng.choice(ADJECTIVES)
        n1, n2, n3 = rng.choice(NOUNS), rng.choice(NOUNS), rng.choice(NOUNS)
        vp, vr = rng.choice(VERBS_PAST), rng.choice(VERBS_PRESENT)
        adv, prep, conj = rng.choice(ADVERBS), rng.choice(PREPOSITIONS), rng.choice(CONNECTORS)
        if kind == 0:
            s = f"The {a1} {n1} {vr} {adv} {prep} the {n2}."
        elif kind == 1:
            s = f"A {n1} {vp} the {a1} {n2} {conj} the {n3} {vr} {prep} it."
        elif kind == 2:
            s = f"Why does the {n1} look so {a1} {prep} the {a2} {n2}?"
        elif kind == 3:
            s = f"In the {n1}, we {vp} a {a1} {n2}, {conj} nobody {vp} the {n3}."
        elif kind == 4:
            s = f"\"{a1.capitalize()} {n1}s are {adv} {a2},\" said the {n2}."
        elif kind == 5:
            s = f"There were {rng.choice(COUNTS)} {n1}s and {rng.randint(2, 99)} {n2}s {prep} the {a1} {n3}."
        elif kind == 6:
            s = f"{w1.capitalize()} {w2}, {w3} {conj} {rng.choice(EXTRA_WORDS)} {rng.choice(EXTRA_WORDS)}."
        else:
            s = f"The {w1} of the {n1} is {adv} {w2} {prep} {rng.choice(EXTRA_WORDS)}."
        out.append(s)
    return out


def training_corpus(seed: int = 0) -> list[str]:
    """The deterministic list of training lines."""
    rng = random.Random(seed)
    lines: list[str] = [line.strip() for line in PASSAGE if line.strip()]
    lines += _english_sentences(rng, 8000)
    lines += _caption_sentences(rng, 3000)
    # every caption word, as a line start (no leading space), after a space, and capitalised at a sentence start
    for _ in range(20):
        for w in CAPTION_VOCABULARY:
            lines.append(w)
            lines.append(f"{w} {w}")
            lines.append(f"{w.capitalize()}.")
    # prompt formats used by the evaluation helpers
    for _ in range(200):
        c, s = rng.choice(COLOURS), rng.choice(SHAPES)
        lines.append(f"Output: a {c} {s}.")
        lines.append(f"Question: what color is the {s}? Short answer: {c}")
    return lines


def build_tokenizer(vocab_size: int = VOCAB_SIZE, seed: int = 0):
    """Train and return the ``PreTrainedTokenizerFast``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(seed), trainer=trainer)
    bos_id = tok.token_to_id(BOS_TOKEN)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B:1", special_tokens=[(BOS_TOKEN, bos_id)]
    )
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens=[MEDIA_TOKEN, ENDOFCHUNK_TOKEN],
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        padding_side="right",
        truncation_side="right",
        model_max_length=2048,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT_DIR)
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    args = parser.parse_args(argv)
    tokenizer = build_tokenizer(args.vocab_size)
    os.makedirs(args.out, exist_ok=True)
    for name in os.listdir(args.out):
        if name.endswith(".json"):
            os.remove(os.path.join(args.out, name))
    tokenizer.save_pretrained(args.out)
    print(f"saved tokenizer with {len(tokenizer)} tokens to {args.out}: {sorted(os.listdir(args.out))}")


if __name__ == "__main__":
    main()
