"""The demo instruction set: questions about the demo tales, answered from what each tale told.

Every tale of `generate_stories` comes with its Tale (the slots the plot filled: the hero, where
they live, what they went looking for, who helped, the moral), so each answer is written from
the same facts the tale was written from and is right by construction. `generate_examples`
turns each tale into one example, in the two formats `prepare --format instructions` reads:
half Alpaca-style records (`instruction` = a question, `input` = the tale, `output` = the
answer), half conversations (`messages`: the tale and a question, its answer, a second question
and its answer, sometimes after a system message). Deterministic under a seed; the tales are the
demo corpus's own for that seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from gpt2es_cli.data.demo import generate_stories
from gpt2es_cli.data.demo.patterns import Tale, polish

SYSTEM = "Eres un asistente que responde preguntas sobre cuentos infantiles, con frases cortas y claras."

# (question, answer) patterns in the pattern language of patterns.py, without <a|b> choices: only
# the tale's genders and slots fill them in, so asking draws nothing from the tale's generator.
_ABOUT_EVERY_TALE = (
    ("¿Quién es el personaje principal del cuento?", "Es {hero}, {hero_article} {hero_noun} {trait}."),
    ("¿Dónde vive {hero}?", "{hero} vive {home}."),
    ("¿Cuál es la moraleja del cuento?", "La moraleja es que {moral}."),
)
_BY_PLOT = {
    "cure": (("¿Qué fue a buscar {hero}?",
              "Fue a buscar {remedy_intro}, que crecía {where_it_grows}, para curar a {loved_one}."),),
    "wish": (("¿Cuál era el sueño de {hero}?", "{hero} soñaba con {dream}."),),
    "lost": (("¿Qué perdió {hero}?", "Perdió {their_treasure}, que le había regalado {giver}."),),
    "friend": (("¿Quién llegó a {community}?", "Llegó {newcomer_intro}."),),
}
_WHO_TOOK_IT = {  # the lost treasure's ending (Tale.ending: who took it)
    "urraca": "Una urraca, que [treasure:se lo|se la] había llevado a su nido de cosas brillantes.",
    "ratones": "Una familia de ratoncitos, que dormía sobre [treasure:él|ella] para no pasar frío.",
    "cabra": "La cabra, que [treasure:se lo|se la] estaba comiendo detrás del establo.",
    "cachorro": "Un cachorro juguetón, que [treasure:lo|la] tenía en la boca porque quería jugar.",
    "viento": "Nadie: el viento [treasure:lo|la] había dejado [treasure:enganchado|enganchada] en la rama más alta de un roble.",
}
_VILLAGE_TROUBLE = {  # the village plot's trouble, by its ending (Tale.ending: the moral's key)
    "bees": "Las abejas desaparecieron de {community}, y los árboles se quedaron sin fruta.",
    "build": "El río creció tanto que se llevó el puente de {community}.",
    "together": "El arroyo se quedó sin agua, porque una roca enorme tapaba el manantial.",
    "giant": "Un viento helado bajaba de la montaña: eran los suspiros de un gigante que se sentía solo.",
    "dragon": "Un dragón rugía por las noches porque le dolía muchísimo una muela.",
    "lighthouse": "La luz del faro se apagó en una noche de tormenta, y los barcos no encontraban el puerto.",
}


def questions(tale: Tale) -> list[tuple[str, str]]:
    """Every question this tale can answer, with its answer."""
    pairs = list(_ABOUT_EVERY_TALE) + list(_BY_PLOT.get(tale.plot, ()))
    if tale.plot == "lost":
        pairs.append(("¿Quién tenía {their_treasure}?", _WHO_TOOK_IT[tale.ending]))
    if tale.plot == "village":
        pairs.append(("¿Qué problema hubo en {community}?", _VILLAGE_TROUBLE[tale.ending]))
    if "helper" in tale.slots:
        pairs.append(("¿Quién ayudó a {hero} en el camino?", "Le ayudó {helper_intro}."))
    return [(polish(tale.expand(q)), polish(tale.expand(a))) for q, a in pairs]


def generate_examples(seed: int = 0) -> Iterator[dict[str, Any]]:
    """One instruction example per demo tale, for ever (see the module docstring)."""
    rng = random.Random(f"gpt2es demo instructions {seed}")  # apart from the tales' own generator
    for text, tale in generate_stories(seed):
        pairs = questions(tale)
        if rng.random() < 0.5:
            question, answer = rng.choice(pairs)
            yield {"instruction": question, "input": text, "output": answer}
            continue
        (q1, a1), (q2, a2) = rng.sample(pairs, 2)
        messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.5 else []
        messages += [
            {"role": "user", "content": f"{text}\n\n{q1}"},
            {"role": "assistant", "content": a1},
            {"role": "user", "content": q2},
            {"role": "assistant", "content": a2},
        ]
        yield {"messages": messages}
