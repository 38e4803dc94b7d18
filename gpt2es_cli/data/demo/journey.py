"""The journey the quest plots share: the road, an obstacle, and a helper who gets the hero past it.

`journey(tale, avoid)` writes those paragraphs from the tables below: landscapes to cross, helpers
(what they can do, by tags) with the troubles the hero may get them out of, and obstacles with the
helpers that solve each. It casts the helper in the role `helper`, with the slots `helper` (definite:
"la tortuga") and `helper_intro` (first mention: "una tortuga vieja").
"""

from __future__ import annotations

from dataclasses import dataclass

from gpt2es_cli.data.demo.grammar import ADJECTIVES, Noun, noun_phrase, register_adjective, register_noun
from gpt2es_cli.data.demo.patterns import Tale, capitalize

# (verb, noun, adjectives that suit it): "atravesó el bosque oscuro", "cruzó el puente viejo", ...
_LANDSCAPES = {
    verb: [(register_noun(sg, g), [register_adjective(a) for a in adjs.split("/")]) for sg, g, adjs in rows]
    for verb, rows in (
        ("atravesó", (("bosque", "m", "oscuro/silencioso/espeso/frondoso"), ("pinar", "m", "oscuro/silencioso"),
                      ("prado", "m", "verde/florido/inmenso"), ("pradera", "f", "verde/florido/inmenso"),
                      ("campo", "m", "verde/solitario/inmenso"))),
        ("cruzó", (("arroyo", "m", "helado/cristalino/rumoroso/tranquilo"), ("río", "m", "tranquilo/helado/rumoroso"),
                   ("puente", "m", "viejo/estrecho/colgante"))),
        ("subió", (("colina", "f", "empinado/verde/suave"), ("cuesta", "f", "empinado/pedregoso"),
                   ("loma", "f", "suave/verde"), ("monte", "m", "alto/nevado/pedregoso"))),
    )
}
_DURATIONS = ("tres días", "muchas horas", "todo el día", "dos días y dos noches",
              "una semana entera", "toda la mañana")


@dataclass(frozen=True)
class _Helper:
    """An animal that can help: its noun, species, and tags for what it can do (wings, legs, water...)."""

    noun: Noun
    species: str
    tags: frozenset[str]


def _helpers(table: str) -> dict[str, _Helper]:
    """Rows "noun g species tag1/tag2" (g* = tonic a), by noun."""
    out = {}
    for row in table.strip().splitlines():
        sg, g, species, tags = row.split()
        noun = register_noun(sg, g.rstrip("*"), tonic_a=g.endswith("*"))
        out[sg] = _Helper(noun, species, frozenset(tags.split("/")))
    return out


_HELPERS = _helpers("""
    tortuga f tortuga legs/land
    castor m castor legs/land
    pato m pato wings/land
    pez m pez water
    cabra f cabra legs/land
    águila f* águila wings/nest/land
    golondrina f golondrina wings/nest/land
    luciérnaga f luciérnaga wings/land
    búho m búho wings/nest/land
    murciélago m murciélago wings/land
    ratoncito m ratón legs/land
    urraca f urraca wings/nest/land
    oso m oso legs/land
    ardilla f ardilla legs/land
    conejo m conejo legs/land
    grillo m grillo legs/land
    ruiseñor m ruiseñor wings/nest/land
    topo m topo legs/land
    araña f araña legs/land
    hormiga f hormiga legs/land
    paloma f paloma wings/nest/land
""")

# (what happened to the helper, what the hero did, the tag the helper needs)
_HELPER_TROUBLES = (
    ("estaba [helper:atrapado|atrapada] en una red", "deshizo los nudos uno a uno hasta [helper:liberarlo|liberarla]", "land"),
    ("estaba [helper:atrapado|atrapada] en una red", "deshizo los nudos con paciencia hasta [helper:liberarlo|liberarla]", "water"),
    ("tenía una espina clavada en la pata", "le sacó la espina con mucho cuidado", "legs"),
    ("tenía un ala herida y no podía volar",
     "le vendó el ala con una tira de tela y [helper:lo|la] dejó descansando en un lugar seguro", "wings"),
    ("tenía tanta hambre que apenas podía moverse", "compartió con [helper:él|ella] su comida", "land"),
    ("se había caído en un hoyo y no podía salir", "le acercó una rama larga y [helper:lo|la] ayudó a salir", "legs"),
    ("lloraba porque su nido se había caído del árbol", "volvió a colocar el nido en una rama alta y segura", "nest"),
    ("se había quedado en un charco que se estaba secando", "[helper:lo|la] llevó con cuidado hasta el río", "water"),
    ("se había perdido y no sabía volver a casa", "le indicó el camino de vuelta", "land"),
)


@dataclass(frozen=True)
class _Obstacle:
    """Something that stops the hero on the road, and the helpers who know how to get past it."""

    intros: tuple[str, ...]
    worry: str  # "cruzar este río": what the hero cannot do
    solves: dict[str, tuple[str, ...]]  # helper -> how it gets the hero past
    avoid: str = ""  # a landscape noun that would clash on the road before it


_OBSTACLES = (
    _Obstacle(
        ("<Al cabo de un rato|Más adelante>, llegó a un río tan ancho y tan profundo que no se veía ningún puente.",
         "De pronto, el camino terminó en la orilla de un río ancho y revuelto."),
        "cruzar este río",
        {"tortuga": ("{helper:cap} le dijo que subiera a su caparazón y, despacio, muy despacio, [hero:lo|la] llevó hasta la otra orilla.",),
         "castor": ("{helper:cap} llamó a toda su familia y, entre todos, tendieron un puente de troncos de una orilla a la otra.",),
         "pato": ("{helper:cap} le enseñó un lugar, un poco más abajo, donde el río era tan poco profundo que se podía cruzar saltando de piedra en piedra.",),
         "pez": ("{helper:cap} nadó delante de {hero} y le mostró un camino de piedras escondidas bajo el agua por el que pudo cruzar sin mojarse.",)},
        "río",
    ),
    _Obstacle(
        ("Más adelante, una pared de roca altísima le cerraba el paso.",
         "Al final del sendero se alzaba una pared de roca tan alta que parecía tocar las nubes."),
        "subir esta pared",
        {"cabra": ("{helper:cap} conocía un sendero secreto entre las rocas y, saltando de piedra en piedra, [hero:lo|la] guio hasta arriba.",),
         "águila": ("{helper:cap} [hero:lo|la] subió a su lomo, extendió sus grandes alas y [hero:lo|la] llevó volando hasta lo más alto.",),
         "golondrina": ("{helper:cap} voló de un lado a otro hasta encontrar una grieta con escalones de piedra, y le enseñó por dónde subir.",)},
    ),
    _Obstacle(
        ("Al anochecer, una niebla tan espesa lo cubrió todo que no se veía nada.",
         "<Poco después|Al caer la tarde> se hizo de noche, y estaba tan oscuro que {hero} ya no distinguía el camino."),
        "encontrar el camino <en esta oscuridad|sin ver nada>",
        {"luciérnaga": ("{helper:cap} llamó a sus hermanas y, en un momento, cientos de lucecitas iluminaron el camino.",),
         "búho": ("{helper:cap}, que veía muy bien en la oscuridad, voló delante de {hero} y [hero:lo|la] guio entre los árboles.",),
         "murciélago": ("{helper:cap}, que sabía orientarse sin ver, voló delante de {hero} y le fue indicando el camino con sus chillidos.",)},
    ),
    _Obstacle(
        ("Más adelante, una verja de hierro cerrada con un candado enorme le cortaba el paso.",
         "El sendero terminaba ante una verja de hierro, y el candado estaba bien cerrado."),
        "abrir esta verja",
        {"ratoncito": ("{helper:cap} se coló entre los barrotes, encontró la llave colgada de un clavo y se la trajo a {hero}.",),
         "urraca": ("{helper:cap} voló hasta su nido y volvió con una llave pequeña y brillante en el pico. ¡Era justo la llave del candado!",)},
    ),
    _Obstacle(
        ("De repente, el cielo se puso negro y empezó una tormenta terrible, con truenos y relámpagos.",
         "<A mitad de camino|Aquella tarde>, estalló una tormenta tan fuerte que el viento doblaba los árboles."),
        "seguir con esta tormenta",
        {"oso": ("{helper:cap} le mostró una cueva seca y caliente, y allí esperaron juntos a que pasara la tormenta.",),
         "ardilla": ("{helper:cap} le enseñó el hueco de un árbol enorme, donde {hero} pudo refugiarse hasta que volvió a salir el sol.",),
         "conejo": ("{helper:cap} [hero:lo|la] llevó hasta su madriguera, y allí esperaron juntos, calentitos, a que pasara la tormenta.",)},
    ),
    _Obstacle(
        ("Para seguir había que cruzar un puente, pero en él vivía un ogro gruñón que no dejaba pasar a nadie.",),
        "pasar por ese puente",
        {"grillo": ("{helper:cap} empezó a cantar una canción tan dulce que el ogro bostezó, cerró los ojos y se quedó profundamente dormido. {hero} cruzó el puente de puntillas.",),
         "ruiseñor": ("{helper:cap} cantó una nana tan bonita que el ogro se durmió sentado, y {hero} cruzó el puente de puntillas.",)},
        "puente",
    ),
    _Obstacle(
        ("Al final del sendero, un zarzal enorme, lleno de espinas, le cerraba el paso.",
         "<Más adelante|Poco después>, el camino desaparecía bajo un zarzal enorme, lleno de espinas."),
        "atravesar estas zarzas",
        {"topo": ("{helper:cap} cavó un túnel por debajo del zarzal, y los dos pasaron al otro lado sin pincharse.",),
         "conejo": ("{helper:cap} le enseñó un pasadizo secreto entre las ramas, tan escondido que nadie más lo conocía.",)},
    ),
    _Obstacle(
        ("De pronto, el camino se cortaba: delante había un barranco tan profundo que no se veía el fondo.",
         "<Más adelante|Al cabo de un rato>, llegó al borde de un barranco muy profundo, y el puente que lo cruzaba se había caído."),
        "llegar al otro lado",
        {"castor": ("{helper:cap} royó el tronco de un pino alto hasta que cayó sobre el barranco, y {hero} cruzó por él como por un puente.",),
         "águila": ("{helper:cap} [hero:lo|la] subió a su lomo y, con dos batidas de sus grandes alas, [hero:lo|la] dejó al otro lado.",),
         "araña": ("{helper:cap} tejió durante toda la noche un puente de hilo tan fuerte que, a la mañana siguiente, {hero} pudo cruzarlo sin miedo.",)},
    ),
    _Obstacle(
        ("Al entrar en el bosque, los senderos se cruzaban y se separaban una y otra vez, como en un laberinto.",
         "<Más adelante|Poco después>, {hero} se perdió en un laberinto de senderos que daban vueltas y más vueltas."),
        "salir de este laberinto",
        {"hormiga": ("{helper:cap} llamó a sus compañeras, que formaron una larga fila por el sendero bueno, y {hero} solo tuvo que seguirlas.",),
         "paloma": ("{helper:cap} voló muy alto, miró los senderos desde el cielo y le fue indicando por dónde ir.",),
         "búho": ("{helper:cap}, que conocía cada árbol del bosque, voló delante de {hero} y [hero:lo|la] guio hasta la salida.",)},
    ),
)


def journey(t: Tale, avoid: set[str]) -> None:
    """The road, then an obstacle and a helper who gets the hero past it.

    Half the time the hero has helped that helper on the road (kindness repaid); otherwise the
    helper simply turns up.
    """
    rng = t.rng
    obstacle = rng.choice(_OBSTACLES)
    keys = [h for h in obstacle.solves if _HELPERS[h].species not in avoid] or list(obstacle.solves)
    helper_key = rng.choice(keys)
    helper = _HELPERS[helper_key]
    hn = helper.noun
    adj = None if rng.random() < 0.4 else rng.choice((ADJECTIVES["viejo"], ADJECTIVES["pequeño"]))
    t.cast("helper", hn.gender, helper=noun_phrase(hn, True), helper_intro=noun_phrase(hn, False, adj))

    roads = []
    for verb in rng.sample(list(_LANDSCAPES), rng.choice((1, 2, 2, 3))):
        noun, adjs = rng.choice([row for row in _LANDSCAPES[verb] if row[0].sg != obstacle.avoid])
        roads.append(f"{verb} {noun_phrase(noun, True, rng.choice(adjs))}")
    walk = f"<Caminó|Anduvo> durante {rng.choice(_DURATIONS)}"
    if len(roads) == 1:
        walk += f" y {roads[0]}."
    else:
        walk += ". " + capitalize(", ".join(roads[:-1]) + " y " + roads[-1]) + "."
    worry = (f"—¿Cómo voy a {obstacle.worry}? —se preguntó {{hero}}, [hero:preocupado|preocupada].",
             f"—¿Y ahora cómo voy a {obstacle.worry}? —suspiró {{hero}}.")
    if rng.random() < 0.5:
        trouble, fix, _ = rng.choice([tr for tr in _HELPER_TROUBLES if tr[2] in helper.tags])
        meet = ((f"Al pasar junto a un estanque, vio a {{helper_intro}} que {trouble}.",) if "water" in helper.tags else
                (f"<Por el camino|A mitad de camino|En un recodo del sendero>, encontró a {{helper_intro}} que {trouble}.",
                 f"De pronto oyó un quejido. Era {{helper_intro}}, que {trouble}."))
        t.para(walk, meet,
               (f"{{hero}} {fix}.", f"Sin pensarlo dos veces, {{hero}} {fix}."))
        t.para(("—Muchas gracias —dijo {helper}—. Algún día te devolveré el favor.",
                "—Gracias, [hero:amigo|amiga] —dijo {helper}—. Nunca olvidaré lo que has hecho por mí.",
                "—Eres muy amable —dijo {helper}—. Si algún día necesitas ayuda, no dudes en llamarme."))
        t.para(obstacle.intros)
        if rng.random() < 0.4:
            t.para(worry)
        t.para(("En ese momento apareció {helper}, [helper:al que|a la que] había ayudado en el camino.",
                "Entonces oyó una voz conocida: era {helper}, [helper:al que|a la que] había ayudado en el camino."),
               ("«Ahora me toca a mí ayudarte», le dijo.", None),
               obstacle.solves[helper_key])
    else:
        t.para(walk, obstacle.intros)
        t.para(worry)
        t.para(("En ese momento pasó por allí {helper_intro}<, que lo había oído todo|>.",
                "Entonces se le acercó {helper_intro}."),
               ("«Yo te ayudaré», le dijo.", "«No te preocupes, yo sé cómo hacerlo», le dijo."),
               obstacle.solves[helper_key])

