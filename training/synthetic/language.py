"""Language of the synthetic world, one generator per dataset style, all computed from the scene.

Every answer is read off the scene, and the generators balance what a text-only guesser could
exploit: yes/no questions ask about present and absent things equally often, NLVR2 statements are
true on one image pair and false on another, SNLI-VE hypotheses of one template take more than one
label.  The summary table reports how far a question-only prior still gets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from training.synthetic.scene import COLOURS, SHAPES, SIZES, Scene, SceneObject

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
# Attribute combinations from the shortest to the longest description of an object.
DESCRIPTIONS: tuple[tuple[str, ...], ...] = (
    ("shape",),
    ("colour", "shape"),
    ("size", "shape"),
    ("size", "colour", "shape"),
)


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("ss", "x", "sh", "ch")) or shape == "cross" else "s")


def pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def matches(obj: SceneObject, other: SceneObject, attrs: Sequence[str]) -> bool:
    return all(getattr(obj, a) == getattr(other, a) for a in attrs)


def unique_description(
    scene: Scene, obj: SceneObject, options: Sequence[tuple[str, ...]] = DESCRIPTIONS
) -> tuple[str, ...] | None:
    """The first attribute set (in `options` order) that no other object of the scene shares."""
    for attrs in options:
        if not any(o is not obj and matches(o, obj, attrs) for o in scene.objects):
            return attrs
    return None


def horizontal(scene: Scene, obj: SceneObject) -> str:
    x = obj.centre[0] / scene.width
    return "left" if x < 0.4 else "right" if x > 0.6 else "middle"


def vertical(scene: Scene, obj: SceneObject) -> str:
    y = obj.centre[1] / scene.height
    return "top" if y < 0.4 else "bottom" if y > 0.6 else "middle"


# Spatial relations between two objects, from their centres with a margin (so "left of" is clear).
def relation(a: SceneObject, b: SceneObject) -> str | None:
    """How a relates to b: "to the left of", "to the right of", "above", "below", or None."""
    (ax, ay), (bx, by) = a.centre, b.centre
    dx, dy = ax - bx, ay - by
    margin = 0.25 * min(b.box[2] - b.box[0], a.box[2] - a.box[0])
    if abs(dx) >= abs(dy) and abs(dx) > margin:
        return "to the left of" if dx < 0 else "to the right of"
    if abs(dy) > abs(dx) and abs(dy) > margin:
        return "above" if dy < 0 else "below"
    return None


# -- VQA v2 ------------------------------------------------------------------------------------------


@dataclass
class QA:
    question: str
    answer: str
    kind: str  # question type (VQA `question_type`, GQA semantic type)
    answer_type: str = "other"  # VQA: yes/no, number, other


def _exists_question(scene: Scene, rng: np.random.Generator) -> QA:
    if rng.random() < 0.5 and scene.objects:
        o = pick(rng, scene.objects)
        colour, shape = o.colour, o.shape
    else:
        while True:
            colour, shape = pick(rng, list(COLOURS)), pick(rng, SHAPES)
            if scene.count(shape=shape, colour=colour) == 0:
                break
    ans = "yes" if scene.count(shape=shape, colour=colour) else "no"
    return QA(f"is there a {colour} {shape}?", ans, "is there a", "yes/no")


def _count_question(scene: Scene, rng: np.random.Generator) -> QA:
    present = [o.shape for o in scene.objects]
    if rng.random() < 0.5:
        shape = pick(rng, present) if present and rng.random() < 0.75 else pick(rng, SHAPES)
        return QA(f"how many {plural(shape)} are there?", str(scene.count(shape=shape)), "how many", "number")
    colour = pick(rng, [o.colour for o in scene.objects]) if rng.random() < 0.75 else pick(rng, list(COLOURS))
    return QA(
        f"how many {colour} objects are in the picture?",
        str(scene.count(colour=colour)),
        "how many",
        "number",
    )


def _attribute_question(scene: Scene, rng: np.random.Generator) -> QA | None:
    obj = pick(rng, scene.objects)
    what = pick(rng, ("colour", "shape", "size", "where"))
    rest = {
        "colour": (("shape",), ("size", "shape")),
        "shape": (("colour",), ("size", "colour")),
        "size": (("colour", "shape"),),
        "where": (("colour", "shape"), ("size", "colour", "shape")),
    }[what]
    attrs = unique_description(scene, obj, rest)
    if attrs is None:
        return None
    noun = obj.phrase(*attrs) + ("" if "shape" in attrs else " object")
    match what:
        case "colour":
            return QA(f"what color is the {noun}?", obj.colour, "what color is the")
        case "shape":
            return QA(f"what shape is the {noun}?", obj.shape, "what shape is the")
        case "size":
            return QA(f"what size is the {noun}?", obj.size, "what size is the")
        case _:
            return QA(f"where is the {noun}?", horizontal(scene, obj), "where is the")


def _compare_question(scene: Scene, rng: np.random.Generator) -> QA | None:
    counts = Counter(o.shape for o in scene.objects)
    pairs = [(a, b) for a in counts for b in counts if counts[a] != counts[b]]
    if not pairs:
        return None
    a, b = pick(rng, pairs)  # ordered pairs of unequal counts: "yes" and "no" equally likely
    ans = "yes" if counts[a] > counts[b] else "no"
    return QA(f"are there more {plural(a)} than {plural(b)}?", ans, "are there more", "yes/no")


def vqa_questions(scene: Scene, rng: np.random.Generator, n: int) -> list[QA]:
    makers: list[Callable[[Scene, np.random.Generator], QA | None]] = [
        _exists_question,
        _count_question,
        _attribute_question,
        _attribute_question,
        _compare_question,
    ]
    out: list[QA] = []
    seen: set[str] = set()
    for _ in range(n * 6):
        if len(out) == n:
            break
        qa = pick(rng, makers)(scene, rng)
        if qa is not None and qa.question not in seen:
            seen.add(qa.question)
            out.append(qa)
    return out


def _wrong_answer(qa: QA, rng: np.random.Generator) -> str:
    match qa.answer_type:
        case "yes/no":
            return "no" if qa.answer == "yes" else "yes"
        case "number":
            return str(max(0, int(qa.answer) + pick(rng, (-1, 1))))
    for pool in (list(COLOURS), list(SHAPES), list(SIZES), ["left", "right", "middle"]):
        if qa.answer in pool:
            return pick(rng, [p for p in pool if p != qa.answer])
    return qa.answer


def _surface(answer: str, rng: np.random.Generator) -> str:
    """How an annotator might type the answer: number words, capitals, articles, trailing dots."""
    r = rng.random()
    if answer.isdigit() and int(answer) <= 10 and r < 0.3:
        return NUMBER_WORDS[int(answer)] if rng.random() < 0.5 else NUMBER_WORDS[int(answer)].capitalize()
    if r < 0.1:
        return answer.capitalize()
    if r < 0.15 and answer in SHAPES:
        return f"a {answer}"
    if r < 0.2:
        return answer + ("." if rng.random() < 0.5 else " ")
    return answer


def annotator_answers(qa: QA, rng: np.random.Generator, n: int = 10) -> list[str]:
    """Ten human answers: mostly right (less so for counting), sometimes typed differently."""
    p_right = 0.72 if qa.answer_type == "number" else 0.85
    return [_surface(qa.answer if rng.random() < p_right else _wrong_answer(qa, rng), rng) for _ in range(n)]


# -- GQA -----------------------------------------------------------------------------------------------


def gqa_questions(scene: Scene, rng: np.random.Generator, n: int) -> list[QA]:
    """Compositional questions: relations between uniquely described objects, logic, comparison."""
    objs = scene.objects
    out: list[QA] = []
    seen: set[str] = set()

    def name(o: SceneObject) -> str | None:
        attrs = unique_description(scene, o, (("colour", "shape"), ("size", "colour", "shape")))
        return None if attrs is None else o.phrase(*attrs)

    for _ in range(n * 8):
        if len(out) == n or len(objs) < 2:
            break
        a, b = (objs[i] for i in rng.choice(len(objs), size=2, replace=False))
        na, nb, rel = name(a), name(b), relation(a, b)
        kind = pick(
            rng, ("relate_colour", "choose_rel", "verify_rel", "logical", "same_colour", "relate_shape")
        )
        qa: QA | None = None
        match kind:
            case "relate_colour" if nb and rel:
                # The target is the only object of its shape in that relation to the anchor.
                same = [o for o in objs if o is not b and o.shape == a.shape and relation(o, b) == rel]
                if len(same) == 1:
                    qa = QA(f"what color is the {a.shape} {rel} the {nb}?", a.colour, kind)
            case "relate_shape" if nb and rel:
                same = [o for o in objs if o is not b and o.colour == a.colour and relation(o, b) == rel]
                if len(same) == 1:
                    qa = QA(f"what shape is the {a.colour} object {rel} the {nb}?", a.shape, kind)
            case "choose_rel" if na and nb and rel in ("to the left of", "to the right of"):
                qa = QA(f"is the {na} to the left or to the right of the {nb}?", rel.split()[-2], kind)
            case "verify_rel" if na and nb and rel:
                asked = (
                    rel
                    if rng.random() < 0.5
                    else pick(rng, ("to the left of", "to the right of", "above", "below"))
                )
                qa = QA(f"is the {na} {asked} the {nb}?", "yes" if asked == rel else "no", kind)
            case "logical":
                c1, s1 = (
                    (a.colour, a.shape)
                    if rng.random() < 0.7
                    else (pick(rng, list(COLOURS)), pick(rng, SHAPES))
                )
                c2, s2 = (
                    (b.colour, b.shape)
                    if rng.random() < 0.6
                    else (pick(rng, list(COLOURS)), pick(rng, SHAPES))
                )
                both = scene.count(shape=s1, colour=c1) > 0 and scene.count(shape=s2, colour=c2) > 0
                if (c1, s1) != (c2, s2):
                    qa = QA(
                        f"are there both {c1} {plural(s1)} and {c2} {plural(s2)} in the image?",
                        "yes" if both else "no",
                        kind,
                    )
            case "same_colour" if na and nb:
                qa = QA(
                    f"do the {na} and the {nb} have the same color?",
                    "yes" if a.colour == b.colour else "no",
                    kind,
                )
        if qa is not None and qa.question not in seen:
            seen.add(qa.question)
            out.append(qa)
    return out


# -- Visual Genome QA (7W style; answers typed as sentences fragments) ---------------------------------


def vg_questions(scene: Scene, rng: np.random.Generator, n: int) -> list[QA]:
    out: list[QA] = []
    seen: set[str] = set()
    for _ in range(n * 6):
        if len(out) == n:
            break
        qa = pick(rng, (_attribute_question, _count_question, _attribute_question))(scene, rng)
        if qa is None or qa.question in seen:
            continue
        seen.add(qa.question)
        answer = qa.answer
        if answer.isdigit() and int(answer) <= 10:
            answer = NUMBER_WORDS[int(answer)]
        if qa.kind == "where is the" and rng.random() < 0.3:
            answer = f"on the {answer}" if answer != "middle" else "in the middle"
        # VG answers read like "Red." - capitalised, with a period.
        out.append(QA(qa.question.capitalize(), answer.capitalize() + ".", qa.kind, qa.answer_type))
    return out


# -- captions (COCO / Flickr retrieval, SNLI-VE premises) ----------------------------------------------


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def captions(scene: Scene, rng: np.random.Generator, k: int = 5) -> list[str]:
    objs = scene.objects
    out: list[str] = []
    for _ in range(k * 10):
        if len(out) == k:
            break
        a = pick(rng, objs)
        b = pick(rng, [o for o in objs if o is not a]) if len(objs) > 1 else a
        pa = a.phrase(*pick(rng, DESCRIPTIONS[1:]))
        pb = b.phrase(*pick(rng, DESCRIPTIONS[1:]))
        rel = relation(a, b)
        template = int(rng.integers(6))
        if template == 0:
            text = f"{_article(pa)} and {_article(pb)}."
        elif template == 1:
            text = f"{NUMBER_WORDS[min(len(objs), 10)]} shapes, including {_article(pa)}."
        elif template == 2 and rel:
            text = f"{_article(pa)} {rel} {_article(pb)}."
        elif template == 3 and len(objs) >= 3:
            c = pick(rng, [o for o in objs if o is not a and o is not b] or [a])
            text = (
                f"there is {_article(pa)}, {_article(pb)} and {_article(c.phrase('colour', 'shape'))} here."
            )
        elif template == 4:
            n = scene.count(shape=a.shape)
            noun = plural(a.shape) if n > 1 else a.shape
            text = f"{NUMBER_WORDS[min(n, 10)]} {noun} next to {_article(pb)}."
        else:
            text = f"{_article(pa)} on the {horizontal(scene, a)} of the picture."
        text = text[0].upper() + text[1:]
        if text not in out:
            out.append(text)
    return out


# -- referring expressions -----------------------------------------------------------------------------


def _relative_location(scene: Scene, obj: SceneObject, attrs: tuple[str, ...]) -> str | None:
    """left/right/top/bottom when `obj` is the extreme one among objects sharing `attrs`."""
    group = [o for o in scene.objects if matches(o, obj, attrs)]
    for word, key, sign in (("left", 0, 1), ("right", 0, -1), ("top", 1, 1), ("bottom", 1, -1)):
        ranked = sorted(group, key=lambda o: sign * o.centre[key])
        if ranked[0] is obj and (len(ranked) == 1 or abs(ranked[1].centre[key] - obj.centre[key]) > 15):
            return word
    return None


def refcoco_expression(scene: Scene, obj: SceneObject, rng: np.random.Generator) -> str | None:
    """Short, often with a location word ("left red circle", "square on the right")."""
    attrs = unique_description(scene, obj, DESCRIPTIONS[:3])
    if attrs is not None and rng.random() < 0.5:
        return obj.phrase(*attrs)
    base = attrs or ("colour", "shape")
    loc = _relative_location(scene, obj, base)
    if loc is None:
        return None if attrs is None else obj.phrase(*attrs)
    phrase = obj.phrase(*base)
    return f"{loc} {phrase}" if rng.random() < 0.5 else f"{phrase} on the {loc}"


def refcoco_plus_expression(scene: Scene, obj: SceneObject, rng: np.random.Generator) -> str | None:
    """Appearance only, no location words (RefCOCO+ rule)."""
    attrs = unique_description(scene, obj, DESCRIPTIONS[1:] if rng.random() < 0.5 else DESCRIPTIONS)
    return None if attrs is None else obj.phrase(*attrs)


def refcocog_expression(scene: Scene, obj: SceneObject, rng: np.random.Generator) -> str | None:
    """Longer: full description plus a relation to another object."""
    full = obj.phrase("size", "colour", "shape")
    anchors = [
        o
        for o in scene.objects
        if o is not obj and relation(obj, o) and unique_description(scene, o, DESCRIPTIONS[1:2]) is not None
    ]
    same = [o for o in scene.objects if matches(o, obj, ("size", "colour", "shape"))]
    if not anchors:
        return f"the {full} in the {horizontal(scene, obj)} of the image" if len(same) == 1 else None
    anchor = pick(rng, anchors)
    rel = relation(obj, anchor)
    if sum(1 for o in same if relation(o, anchor) == rel) != 1:
        return None
    verb = pick(rng, ("that is", "which is", "sitting"))
    return f"the {full} {verb} {rel} the {anchor.phrase('colour', 'shape')}"


# -- Visual7W pointing ---------------------------------------------------------------------------------


def v7w_question(scene: Scene, obj: SceneObject, rng: np.random.Generator) -> str | None:
    same_shape = [o for o in scene.objects if o.shape == obj.shape]
    if (
        len(same_shape) > 1
        and sum(1 for o in same_shape if o.colour == obj.colour) == 1
        and rng.random() < 0.5
    ):
        return f"Which {obj.shape} is {obj.colour}?"
    attrs = unique_description(scene, obj, DESCRIPTIONS[1:])
    if attrs is None:
        return None
    return f"Which is the {obj.phrase(*attrs)}?"


# -- GuessWhat?! ----------------------------------------------------------------------------------------


def guesswhat_dialog(
    scene: Scene, target: SceneObject, rng: np.random.Generator, max_turns: int = 8
) -> list[tuple[str, str]] | None:
    """Yes/no questions chosen greedily to split the remaining candidates until one is left."""
    probes: list[tuple[str, Callable[[SceneObject], bool]]] = []
    for s in SHAPES:
        probes.append((f"is it a {s}?", lambda o, s=s: o.shape == s))
    for c in COLOURS:
        probes.append((f"is it {c}?", lambda o, c=c: o.colour == c))
    for z in SIZES:
        probes.append((f"is it {z}?", lambda o, z=z: o.size == z))
    for h in ("left", "right"):
        probes.append((f"is it on the {h}?", lambda o, h=h: horizontal(scene, o) == h))
    for v in ("top", "bottom"):
        probes.append((f"is it at the {v}?", lambda o, v=v: vertical(scene, o) == v))
    candidates = list(scene.objects)
    dialog: list[tuple[str, str]] = []
    while len(candidates) > 1 and len(dialog) < max_turns:
        scored = []
        for q, test in probes:
            yes = sum(1 for o in candidates if test(o))
            if 0 < yes < len(candidates):
                scored.append((abs(2 * yes - len(candidates)) + rng.random(), q, test))
        if not scored:
            return None
        _, q, test = min(scored, key=lambda t: t[0])
        answer = test(target)
        dialog.append((q, "Yes" if answer else "No"))
        candidates = [o for o in candidates if test(o) == answer]
    return dialog if len(candidates) == 1 else None


# -- NLVR2 ---------------------------------------------------------------------------------------------

Statement = tuple[str, Callable[[Scene, Scene], bool]]


def nlvr2_statement(rng: np.random.Generator, shapes: Sequence[str], colours: Sequence[str]) -> Statement:
    s, c = pick(rng, shapes), pick(rng, colours)
    n = int(rng.integers(1, 5))
    kind = int(rng.integers(8))
    match kind:
        case 0:
            return (
                f"There are exactly {NUMBER_WORDS[n]} {plural(s) if n > 1 else s} in total.",
                lambda l, r: l.count(shape=s) + r.count(shape=s) == n,
            )
        case 1:
            return (
                f"The left image contains more {plural(s)} than the right image.",
                lambda l, r: l.count(shape=s) > r.count(shape=s),
            )
        case 2:
            return (
                f"The right image has more {c} objects than the left image.",
                lambda l, r: r.count(colour=c) > l.count(colour=c),
            )
        case 3:
            return (
                f"Exactly one image contains a {c} {s}.",
                lambda l, r: (l.count(shape=s, colour=c) > 0) != (r.count(shape=s, colour=c) > 0),
            )
        case 4:
            return (
                f"Both images contain at least one {s}.",
                lambda l, r: l.count(shape=s) > 0 and r.count(shape=s) > 0,
            )
        case 5:
            return (
                f"There are at least {NUMBER_WORDS[n]} {c} objects in the right image.",
                lambda l, r: r.count(colour=c) >= n,
            )
        case 6:
            return (
                f"Each image contains exactly {NUMBER_WORDS[n]} objects.",
                lambda l, r: len(l.objects) == n and len(r.objects) == n,
            )
        case _:
            return (
                "There are more objects in the left image than in the right image.",
                lambda l, r: len(l.objects) > len(r.objects),
            )


# -- SNLI-VE -------------------------------------------------------------------------------------------


def _overlaps(a: SceneObject, b: SceneObject) -> bool:
    return min(a.box[2], b.box[2]) > max(a.box[0], b.box[0]) and min(a.box[3], b.box[3]) > max(
        a.box[1], b.box[1]
    )


def snli_ve_hypotheses(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """One hypothesis per label, from templates that take more than one label so wording alone
    does not decide.  "X is hidden behind the Y" is entailed when the picture shows Y
    covering part of X, neutral when Y covers nothing visible (something may be fully hidden), and
    contradicted when there is no Y; "there is / there are no / shows n" are entailed or contradicted.
    """
    obj = pick(rng, scene.objects)
    present = obj.phrase("colour", "shape")
    while True:
        absent_c, absent_s = pick(rng, list(COLOURS)), pick(rng, SHAPES)
        if scene.count(shape=absent_s, colour=absent_c) == 0:
            break
    absent = f"{absent_c} {absent_s}"
    missing_shapes = [s for s in SHAPES if scene.count(shape=s) == 0]
    n = len(scene.objects)

    def behind(x: str, y: str) -> str:
        return f"{_article(x).capitalize()} is hidden behind the {y}."

    def any_object() -> str:
        return f"{pick(rng, list(COLOURS))} {pick(rng, SHAPES)}"

    def shows(k: int) -> str:
        return f"The picture shows {NUMBER_WORDS[min(k, 10)]} shapes."

    # Objects drawn later cover earlier ones; a visible overlap makes "behind" verifiable.
    order = {id(o): k for k, o in enumerate(scene.objects)}
    covered = [
        (a, b)
        for a in scene.objects
        for b in scene.objects
        if order[id(a)] < order[id(b)] and _overlaps(a, b)
    ]
    free = [
        o for o in scene.objects if not any(_overlaps(o, other) for other in scene.objects if other is not o)
    ]

    factual_entail = [f"There is {_article(present)}.", shows(n)]
    if missing_shapes:
        factual_entail.append(f"There are no {plural(pick(rng, missing_shapes))}.")
    if covered and rng.random() < 0.5:
        a, b = pick(rng, covered)
        entail = behind(a.phrase("colour", "shape"), b.phrase("colour", "shape"))
    else:
        entail = pick(rng, factual_entail)
    if rng.random() < 0.5:
        contra = pick(
            rng,
            [
                f"There is {_article(absent)}.",
                shows(n + int(rng.integers(1, 3))),
                f"There are no {plural(obj.shape)}.",
            ],
        )
    else:
        contra = behind(any_object(), absent)
    host = pick(rng, free).phrase("colour", "shape") if free else None
    neutral = behind(any_object(), host) if host else f"The {present} was drawn before the other shapes."
    return [(entail, "entailment"), (contra, "contradiction"), (neutral, "neutral")]
