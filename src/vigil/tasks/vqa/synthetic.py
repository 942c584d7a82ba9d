"""The embedded default data: endoscopy-like scenes with questions of every type, written as VQA JSONL.

Each image shows pinkish tissue (its tone tells the procedure: colonoscopy or gastroscopy) in a darkened circular
field of view, with 0-3 polyps of one colour and size and 0-2 instruments of one colour and kind entering from
the bottom edge. The field of view is 48 mm wide at any pixel size, so sizes are real: the polyps are 4, 8, 15 or
25 mm across, asked as Kvasir-VQA's ranges ("5-10mm") or as a diameter in mm or, for some, in cm ("1.5 cm").
Counts are written as digits and some as words. Questions of every type: yes_no, color, count_numeric,
size_numeric, location (3 x 3 grid, for a single polyp), mcq (with `answer_candidates`) and open_ended
(procedure, instrument). Records carry no `question_type`: the loader infers it, as for real data.

A single polyp lies in a grid cell drawn uniformly from those it fits in, its centre away from the cell's borders,
so that where it is cannot be guessed from the question (placed freely, 46% of them were in the centre). Its
location is asked only when it fits in more than one cell: a 25 mm polyp, half the field wide, is always central.
Its specular highlight sits on the side facing the scope's light at the image centre, as in real endoscopy: the
side a polyp is on is then seen on the polyp itself. The language model finds an image token's row from its
distance to the question (rotary positions), but did not learn the column from token order alone (test column
accuracy 25-39%, chance 33%, in nine runs).

A training image's questions are written as short multi-turn records in LLaVA's `conversations` form (its `mcq`
and location questions single records), as instruction data is written: one sequence trains several answers about
one image, for the cost of one system prompt and one set of image tokens. No turn can be answered from the text
before it: the questions fall in two groups (the size range and the diameter, which give each other away, are in
different ones), and each group asks first the questions every image is asked, then those that exist only for
some scenes (a question about the polyp's colour says there is a polyp), cut into conversations of
`training_turns` turns (a group's last one shorter when its questions run out). Short conversations keep every
question close to the image tokens, as evaluation asks it: with two long conversations per image the questions
asked late in them were learned far worse. Full three-turn conversations need 23% fewer sequences than ones of one
to three turns drawn at random, and the first turn of each trains a question asked alone, as evaluation asks most.
A location question is always asked alone: earlier turns would put the question a varying distance after the image
tokens, and the row is read from that distance. Evaluation images get single questions (a fraction of them one
three-turn conversation), so each is answered from the image and its own text.

Written as `train.jsonl`, `val.jsonl`, `test.jsonl` and `images/` (no image in two splits), and read back by
the same loader as real data.
"""

from __future__ import annotations

import functools
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vigil.core.data import available_cpus
from vigil.core.errors import ConfigError
from vigil.core.files import SPLITS

IMAGE_DIR = "images"
FIELD_OF_VIEW_MM = 48.0
SUPERSAMPLING = 4

PROCEDURES = {"colonoscopy": (206, 118, 118), "gastroscopy": (214, 152, 92)}
POLYP_COLOURS = {"red": (150, 28, 36), "white": (238, 232, 220), "yellow": (226, 198, 64), "purple": (112, 50, 128)}
INSTRUMENT_COLOURS = {"silver": (196, 200, 206), "black": (22, 22, 28), "blue": (36, 78, 196)}
INSTRUMENT_KINDS = ("biopsy forceps", "polyp snare")
SIZES_MM = {4: "<5mm", 8: "5-10mm", 15: "11-20mm", 25: ">20mm"}
# The most polyps a scene holds at each size, so that they fit side by side.
MAX_POLYPS = {4: 3, 8: 3, 15: 2, 25: 1}
# A polyp's centre stays this far (a fraction of the frame) inside the edge, and a single polyp's this far inside
# its grid cell's borders, so that its cell is clear.
EDGE_MARGIN = 0.04
CELL_MARGIN = 0.05
# Polyps stay in the upper part of the frame: instruments enter below.
POLYP_FLOOR = 0.85
# The highlight's shift towards the image centre, in polyp radii per third of the frame the polyp is off centre,
# and at most.
HIGHLIGHT_SHIFT = 0.45
HIGHLIGHT_MAX_SHIFT = 0.6
ROWS = ("upper", "center", "lower")
COLUMNS = ("left", "center", "right")
NUMBER_WORDS = ("zero", "one", "two", "three")
# Fewer scenes than this a process are drawn in this one.
POOL_MIN_SCENES = 200


@dataclass(frozen=True)
class SyntheticVQA:
    """Parameters of the generated data set; its folder name is a hash of them."""

    name: ClassVar[str] = "synthetic_vqa"

    num_images: int = 400
    image_size: int = 64
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # The turns of one training conversation (1: single questions, like evaluation's).
    training_turns: int = 3
    # Evaluation images whose questions are written as one three-turn conversation record.
    conversation_fraction: float = 0.2
    # Diameter answers written in cm instead of mm, and counts written as words.
    cm_fraction: float = 0.3
    word_count_fraction: float = 0.2
    # Scenes without a polyp (the rest hold 1 to the most that fit, fewer more often).
    no_polyp_fraction: float = 0.11
    seed: int = 0

    def write(self, root: Path) -> None:
        """Write the scenes under `root` as VQA JSONL split files and `images/`."""
        if self.training_turns < 1:
            raise ConfigError(f"data.synthetic.training_turns={self.training_turns}: a conversation has 1 turn or more")
        write_scenes(root, self)


@dataclass(frozen=True)
class Scene:
    """What one image shows: procedure, polyps (centres in [0, 1]^2, one colour and size), instruments."""

    procedure: str
    polyp_colour: str
    polyp_mm: int
    polyps: tuple[tuple[float, float], ...]
    instrument_colour: str
    instrument_kind: str
    instruments: tuple[float, ...]


@dataclass(frozen=True)
class Question:
    """A question about a scene, its answer, the options an `mcq` question offers, which of the image's two
    training groups asks it, whether it exists only for some scenes (`conditional`), and whether training asks it
    as a record of its own (`alone`) rather than in a conversation."""

    question: str
    answer: str
    candidates: tuple[str, ...] = ()
    group: int = 0
    conditional: bool = False
    alone: bool = False


def write_scenes(root: Path, spec: SyntheticVQA) -> None:
    """Write `spec.num_images` scenes, their questions as JSONL records per split, and the images."""
    rng = np.random.default_rng(spec.seed)
    (root / IMAGE_DIR).mkdir()
    records: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    scenes, names = [], []
    for index, split in enumerate(assign_splits(rng, spec)):
        scene = draw_scene(rng, spec)
        name = f"{IMAGE_DIR}/scene_{index:05d}.png"
        scenes.append(scene)
        names.append(name)
        questions = ask(rng, scene, spec)
        if split == "train":
            records[split] += training_records(rng, name, questions, spec.training_turns)
        else:
            records[split] += as_records(rng, name, questions, spec.conversation_fraction)
    draw_images([root / name for name in names], scenes, spec)
    for split, rows in records.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def draw_images(paths: list[Path], scenes: list[Scene], spec: SyntheticVQA) -> None:
    """Render and save every scene's image to its path, spread over the machine's CPUs when there are enough to
    repay starting the processes (drawing at 4x is most of the time it takes to write the data)."""
    draw = functools.partial(draw_image, seed=spec.seed, size=spec.image_size)
    processes = min(available_cpus(), len(scenes) // POOL_MIN_SCENES)
    if processes < 2:
        for index, (path, scene) in enumerate(zip(paths, scenes, strict=True)):
            draw(path, index, scene)
        return
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(draw, paths, range(len(scenes)), scenes, chunksize=32))


def draw_image(path: Path, index: int, scene: Scene, seed: int, size: int) -> None:
    """Render scene `index` from its own random stream (the same in any process) and save it."""
    Image.fromarray(render(np.random.default_rng([seed, index]), scene, size)).save(path)


def assign_splits(rng: np.random.Generator, spec: SyntheticVQA) -> list[str]:
    """A shuffled list of split names with the configured val and test fractions."""
    n_val = round(spec.num_images * spec.val_fraction)
    n_test = round(spec.num_images * spec.test_fraction)
    splits = ["val"] * n_val + ["test"] * n_test + ["train"] * (spec.num_images - n_val - n_test)
    return [splits[i] for i in rng.permutation(len(splits))]


def draw_scene(rng: np.random.Generator, spec: SyntheticVQA) -> Scene:
    """A random scene: 0-3 polyps placed apart from each other, 0-2 instruments."""
    polyp_mm = int(rng.choice(list(SIZES_MM)))
    weights = polyp_count_weights(MAX_POLYPS[polyp_mm], spec.no_polyp_fraction)
    count = int(rng.choice(np.arange(MAX_POLYPS[polyp_mm] + 1), p=weights))
    radius = polyp_radius(polyp_mm)
    return Scene(
        procedure=str(rng.choice(list(PROCEDURES))),
        polyp_colour=str(rng.choice(list(POLYP_COLOURS))),
        polyp_mm=polyp_mm,
        polyps=place_in_cell(rng, radius) if count == 1 else place_apart(rng, count, radius),
        instrument_colour=str(rng.choice(list(INSTRUMENT_COLOURS))),
        instrument_kind=str(rng.choice(INSTRUMENT_KINDS)),
        instruments=tuple(float(x) for x in rng.uniform(0.2, 0.8, int(rng.choice(3, p=[0.4, 0.4, 0.2])))),
    )


def polyp_radius(millimetres: int) -> float:
    """A polyp's radius as a fraction of the frame's width."""
    return millimetres / FIELD_OF_VIEW_MM / 2


def polyp_count_weights(most: int, none: float) -> np.ndarray:
    """Probabilities of 0..most polyps: `none` for none, the rest falling with the count."""
    falling = 0.6 ** np.arange(most)
    return np.concatenate([[none], (1 - none) * falling / falling.sum()])


def place_apart(rng: np.random.Generator, count: int, radius: float) -> tuple[tuple[float, float], ...]:
    """`count` centres in the upper part of the frame (instruments enter below), not overlapping each other."""
    centres: list[tuple[float, float]] = []
    while len(centres) < count:
        x = rng.uniform(radius + EDGE_MARGIN, 1 - radius - EDGE_MARGIN)
        y = rng.uniform(radius + EDGE_MARGIN, POLYP_FLOOR - radius)
        if all((x - a) ** 2 + (y - b) ** 2 > (2 * radius + 0.05) ** 2 for a, b in centres):
            centres.append((float(x), float(y)))
    return tuple(centres)


def place_in_cell(rng: np.random.Generator, radius: float) -> tuple[tuple[float, float], ...]:
    """One centre in a grid cell drawn uniformly from those a polyp of `radius` fits in."""
    cells = cells_for(radius)
    x0, x1, y0, y1 = cells[int(rng.integers(len(cells)))]
    return ((float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))),)


@functools.cache
def cells_for(radius: float) -> tuple[tuple[float, float, float, float], ...]:
    """The (x0, x1, y0, y1) ranges, one per grid cell, where a polyp of `radius` can be centred inside the frame,
    above the instruments and away from the cell's borders; cells without room are left out."""
    cells = []
    for row in range(3):
        for column in range(3):
            x0 = max(radius + EDGE_MARGIN, column / 3 + CELL_MARGIN)
            x1 = min(1 - radius - EDGE_MARGIN, (column + 1) / 3 - CELL_MARGIN)
            y0 = max(radius + EDGE_MARGIN, row / 3 + CELL_MARGIN)
            y1 = min(POLYP_FLOOR - radius, (row + 1) / 3 - CELL_MARGIN)
            if x0 < x1 and y0 < y1:
                cells.append((x0, x1, y0, y1))
    return tuple(cells)


def ask(rng: np.random.Generator, scene: Scene, spec: SyntheticVQA) -> list[Question]:
    """Every question the scene can answer, of every type."""
    count = len(scene.polyps)
    tools = len(scene.instruments)
    questions = [
        Question("Is there a polyp?", yes_no(count > 0)),
        Question("Are there any instruments in the image?", yes_no(tools > 0)),
        Question("What type of procedure is the image taken from?", scene.procedure),
        Question("How many polyps are in the image?", count_text(rng, count, spec.word_count_fraction), group=1),
        Question("How many instruments are visible?", str(tools), group=1),
    ]
    if count:
        others = [colour for colour in POLYP_COLOURS if colour != scene.polyp_colour]
        options = [str(c) for c in rng.permutation([scene.polyp_colour, *rng.choice(others, 2, replace=False)])]
        diameter = diameter_text(rng, scene.polyp_mm, spec.cm_fraction)
        questions += [
            Question("Is there more than one polyp?", yes_no(count > 1), conditional=True),
            Question("What color is the polyp?", scene.polyp_colour, conditional=True),
            Question("What is the size of the polyp?", SIZES_MM[scene.polyp_mm], conditional=True),
            Question("What is the diameter of the polyp?", diameter, group=1, conditional=True),
            Question(
                f"Is the polyp {options[0]}, {options[1]} or {options[2]}?",
                scene.polyp_colour,
                tuple(options),
                alone=True,
            ),
        ]
    if count == 1 and len(cells_for(polyp_radius(scene.polyp_mm))) > 1:
        questions.append(Question("Where in the image is the polyp?", location(*scene.polyps[0]), alone=True))
    if tools:
        questions += [
            Question("What color is the instrument?", scene.instrument_colour, conditional=True),
            Question("Which instrument is used?", scene.instrument_kind, group=1, conditional=True),
        ]
    return questions


def yes_no(value: bool) -> str:
    """`yes` or `no`."""
    return "yes" if value else "no"


def count_text(rng: np.random.Generator, count: int, word_fraction: float) -> str:
    """A count in digits, or in words for some answers."""
    return NUMBER_WORDS[count] if rng.random() < word_fraction else str(count)


def diameter_text(rng: np.random.Generator, millimetres: int, cm_fraction: float) -> str:
    """A diameter in mm ("8mm"), or in cm for some answers ("0.8 cm")."""
    return f"{millimetres / 10:g} cm" if rng.random() < cm_fraction else f"{millimetres}mm"


def location(x: float, y: float) -> str:
    """The 3 x 3 grid cell of a point, Kvasir-VQA style: `upper-left`, ..., `center`, ..., `lower-right`."""
    row, column = ROWS[min(int(y * 3), 2)], COLUMNS[min(int(x * 3), 2)]
    return "center" if row == column == "center" else f"{row}-{column}"


def training_records(
    rng: np.random.Generator, image: str, questions: list[Question], most_turns: int
) -> list[dict[str, Any]]:
    """A training image's conversations, and the questions it asks `alone` as single records.

    The questions of each of the image's two groups are ordered always-asked first, then conditional (each part in
    random order), and cut into conversations of `most_turns` turns, the last one shorter when the group's
    questions run out. Short conversations keep every question near the image tokens, where evaluation asks it; a
    later turn never learns its answer from an earlier one.
    """
    stem = Path(image).stem
    records = []
    for group in (0, 1):
        asked = [q for q in questions if q.group == group and not q.alone]
        turns = [asked[i] for i in rng.permutation(len(asked))]
        turns.sort(key=lambda q: q.conditional)
        while turns:
            chunk, turns = turns[:most_turns], turns[most_turns:]
            if len(chunk) == 1:
                records.append(single_record(stem, image, questions.index(chunk[0]), chunk[0]))
            else:
                records.append(conversation_record(f"{stem}-conversation{len(records)}", image, chunk))
    alone = [single_record(stem, image, number, q) for number, q in enumerate(questions) if q.alone]
    return records + alone


def conversation_record(record_id: str, image: str, questions: list[Question]) -> dict[str, Any]:
    """A multi-turn record in LLaVA's form: a human turn (the first with the image placeholder) and a gpt turn per
    question."""
    turns = []
    for number, question in enumerate(questions):
        prefix = "<image>\n" if number == 0 else ""
        turns += [{"from": "human", "value": prefix + question.question}, {"from": "gpt", "value": question.answer}]
    return {"id": record_id, "image": Path(image).name, "conversations": turns}


def single_record(stem: str, image: str, number: int, question: Question) -> dict[str, Any]:
    """One question as a record, with its candidates when it offers any."""
    record = {"id": f"{stem}-q{number}", "image": Path(image).name, "question": question.question}
    return (
        record
        | {"answer": question.answer}
        | ({"answer_candidates": list(question.candidates)} if question.candidates else {})
    )


def as_records(
    rng: np.random.Generator, image: str, questions: list[Question], conversation_fraction: float
) -> list[dict[str, Any]]:
    """An evaluation image's records: one per question, or, for some images, three of the questions without
    candidates as one conversation and the others single."""
    stem = Path(image).stem
    singles = [single_record(stem, image, number, q) for number, q in enumerate(questions)]
    if rng.random() >= conversation_fraction:
        return singles
    asked = [q for q in questions if not q.candidates]
    chosen = [asked[turn] for turn in rng.choice(len(asked), size=min(3, len(asked)), replace=False)]
    texts = {q.question for q in chosen}
    rest = [record for record in singles if record["question"] not in texts]
    return [conversation_record(f"{stem}-conversation", image, chosen), *rest]


def render(rng: np.random.Generator, scene: Scene, size: int) -> np.ndarray:
    """The scene as an RGB array, drawn at 4x and downsampled (smooth edges at 64 px)."""
    big = size * SUPERSAMPLING
    canvas = Image.fromarray(tissue(rng, scene.procedure, big))
    draw = ImageDraw.Draw(canvas)
    radius = polyp_radius(scene.polyp_mm) * big
    for x, y in scene.polyps:
        draw_polyp(draw, rng, x * big, y * big, radius, POLYP_COLOURS[scene.polyp_colour], big)
    for x in scene.instruments:
        draw_instrument(draw, rng, x * big, big, scene.instrument_kind, INSTRUMENT_COLOURS[scene.instrument_colour])
    canvas = canvas.filter(ImageFilter.GaussianBlur(SUPERSAMPLING / 3)).resize((size, size), Image.Resampling.BOX)
    return np.clip(vignette(np.asarray(canvas).astype(np.float32)) + rng.normal(0, 3, (size, size, 1)), 0, 255).astype(
        np.uint8
    )


def tissue(rng: np.random.Generator, procedure: str, size: int) -> np.ndarray:
    """Mucosa in the procedure's tone with soft darker folds."""
    y, x = np.mgrid[0:size, 0:size] / size
    angle, frequency, phase = rng.uniform(0, np.pi), rng.uniform(2, 4), rng.uniform(0, 2 * np.pi)
    folds = 0.88 + 0.12 * np.sin(2 * np.pi * frequency * (x * np.cos(angle) + y * np.sin(angle)) + phase)
    tone = np.array(PROCEDURES[procedure]) + rng.normal(0, 6, 3)
    return np.clip(folds[..., None] * tone, 0, 255).astype(np.uint8)


def vignette(image: np.ndarray) -> np.ndarray:
    """Darken towards the corners, as the light of an endoscope falls off."""
    size = image.shape[0]
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size - 0.5
    falloff = np.clip(1.15 - 1.1 * np.hypot(x, y), 0.35, 1.0)
    return image * falloff[..., None]


def draw_polyp(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    r: float,
    colour: tuple[int, ...],
    size: int,
) -> None:
    """A slightly elliptic blob with a darker rim, and a specular highlight moved towards the centre of the
    `size`-wide image (where the scope's light is) the further the polyp is from it."""
    rx, ry = r * rng.uniform(0.9, 1.1), r * rng.uniform(0.9, 1.1)
    rim = tuple(int(c * 0.75) for c in colour)
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=rim)
    draw.ellipse((cx - 0.85 * rx, cy - 0.85 * ry, cx + 0.85 * rx, cy + 0.85 * ry), fill=colour)
    half = size / 2
    shift = np.array([half - cx, half - cy]) / (2 * half / 3) * HIGHLIGHT_SHIFT * r
    shift *= min(1.0, HIGHLIGHT_MAX_SHIFT * r / max(float(np.hypot(*shift)), 1e-9))
    spot, sx, sy = 0.25 * r, cx + shift[0], cy + shift[1]
    draw.ellipse((sx - spot, sy - spot, sx + spot, sy + spot), fill="white")


def draw_instrument(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, size: int, kind: str, colour: tuple[int, ...]
) -> None:
    """A shaft from the bottom edge towards the centre, ending in forceps jaws or a snare loop."""
    tip = np.array([x + rng.uniform(-0.15, 0.15) * size, rng.uniform(0.55, 0.7) * size])
    base = np.array([x, size * 1.05])
    width = size * 0.05
    draw.line([tuple(base), tuple(tip)], fill=colour, width=int(width))
    direction = (tip - base) / np.linalg.norm(tip - base)
    normal = np.array([-direction[1], direction[0]])
    if kind == "biopsy forceps":
        for side in (-1, 1):
            end = tip + direction * size * 0.07 + side * normal * size * 0.04
            draw.line([tuple(tip), tuple(end)], fill=colour, width=int(width * 0.6))
    else:
        centre = tip + direction * size * 0.08
        r = size * 0.08
        draw.ellipse((centre[0] - r, centre[1] - r, centre[0] + r, centre[1] + r), outline=colour, width=int(width / 2))


def text_corpus() -> list[str]:
    """Every question and answer text the generator can write (what a tokenizer for this data must know)."""
    colours = list(POLYP_COLOURS)
    questions = [
        "Is there a polyp?",
        "Are there any instruments in the image?",
        "How many polyps are in the image?",
        "How many instruments are visible?",
        "What type of procedure is the image taken from?",
        "Is there more than one polyp?",
        "What color is the polyp?",
        "What is the size of the polyp?",
        "What is the diameter of the polyp?",
        "Where in the image is the polyp?",
        "What color is the instrument?",
        "Which instrument is used?",
        *(f"Is the polyp {a}, {b} or {c}?" for a in colours for b in colours for c in colours),
    ]
    answers = [
        "yes",
        "no",
        *map(str, range(4)),
        *NUMBER_WORDS,
        *PROCEDURES,
        *POLYP_COLOURS,
        *INSTRUMENT_COLOURS,
        *INSTRUMENT_KINDS,
        *SIZES_MM.values(),
        *(f"{mm}mm" for mm in SIZES_MM),
        *(f"{mm / 10:g} cm" for mm in SIZES_MM),
        *(location((column + 0.5) / 3, (row + 0.5) / 3) for row in range(3) for column in range(3)),
    ]
    return questions + answers
