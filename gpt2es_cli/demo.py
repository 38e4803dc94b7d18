"""The built-in `demo` corpus: simple Spanish children's tales, generated on the fly.

Every word here (the vocabulary lists, characters, places, objects, plots and sentence
patterns) is original text written for gpt2es; nothing is copied from any book. It gives
`gpt2es prepare --dataset demo` a corpus that needs no download, made for a small model to
learn fast: about 1,500 distinct words, five plots (a cure to fetch, a dream to fulfil, a
lost treasure, a new friend, a village in trouble) and many interchangeable sentences per
step, so a 6-layer GPT-2 trained for minutes on a CPU writes little stories from "Había una vez".

Grammar is built in rather than hoped for: noun phrases are made from a `Noun` (gender, plural)
and an `Adj` (four forms); a gender-dependent word in a pattern is written `[role:masc|fem]` and
resolved against the character it refers to; `<a|b|c>` picks one wording; "de el"/"a el"
contract and "y"/"o" become "e"/"u" where Spanish asks. `NOUNS` and `ADJECTIVES` expose the
lexicon, so a test can check that every article and adjective next to a known noun agrees.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from gpt2es_cli.errors import DataError

DEFAULT_MAX_BYTES = 4_000_000
"""Default size of the corpus in UTF-8 bytes (about 3,000 tales: minutes of CPU training)."""

MIN_CHARS, MAX_CHARS = 400, 1500
"""Every tale has between MIN_CHARS and MAX_CHARS characters."""

# --- Grammar ----------------------------------------------------------------------------------

_UNACCENT = {"á": "a", "é": "e", "í": "i", "ó": "o", "ú": "u"}


def _plural(word: str) -> str:
    """Spanish plural: vowel + s; z -> ces; consonant + es, dropping a last-syllable accent."""
    if word[-1] in "aeiouáéó":
        return word + "s"
    if word[-1] == "z":
        return word[:-1] + "ces"
    if word[-2] in _UNACCENT:  # ratón -> ratones, dragón -> dragones
        word = word[:-2] + _UNACCENT[word[-2]] + word[-1]
    return word + "es"


@dataclass(frozen=True)
class Noun:
    """A noun: singular, gender ("m" or "f") and plural.

    `tonic_a`: a feminine noun starting with a stressed a takes "el"/"un" right before it in the
    singular (el hada buena, un águila vieja) and is feminine everywhere else (las hadas buenas).
    """

    sg: str
    gender: str
    pl: str = ""
    tonic_a: bool = False

    def __post_init__(self) -> None:
        if not self.pl:
            object.__setattr__(self, "pl", _plural(self.sg))

    def form(self, plural: bool = False) -> str:
        return self.pl if plural else self.sg

    def article(self, definite: bool, plural: bool = False) -> str:
        """The article that goes right before this noun."""
        return _article(self.gender, definite, plural, self.tonic_a)


def _article(gender: str, definite: bool, plural: bool = False, tonic_a: bool = False) -> str:
    if plural:
        if definite:
            return "los" if gender == "m" else "las"
        return "unos" if gender == "m" else "unas"
    if gender == "m" or tonic_a:
        return "el" if definite else "un"
    return "la" if definite else "una"


@dataclass(frozen=True)
class Adj:
    """An adjective's four forms: masculine/feminine, singular/plural."""

    m: str
    f: str
    mp: str
    fp: str

    def form(self, gender: str, plural: bool = False) -> str:
        if gender == "m":
            return self.mp if plural else self.m
        return self.fp if plural else self.f


NOUNS: dict[str, Noun] = {}
"""Every noun the tales use, by singular (for the agreement tests)."""
ADJECTIVES: dict[str, Adj] = {}
"""Every adjective the tales inflect, by masculine singular (for the agreement tests)."""


def _noun(sg: str, gender: str, pl: str = "", tonic_a: bool = False) -> Noun:
    noun = NOUNS.setdefault(sg, Noun(sg, gender, pl, tonic_a))
    if noun.gender != gender:
        raise AssertionError(f"{sg!r} is in the lexicon with two genders")
    return noun


def _adj(m: str, f: str = "", mp: str = "", fp: str = "") -> Adj:
    if not f:
        if m.endswith("o"):
            f = m[:-1] + "a"
        elif m.endswith("or"):
            f = m + "a"
        elif m[-2:] in ("ón", "ín", "án"):
            f = m[:-2] + _UNACCENT[m[-2]] + "na"
        else:
            f = m
    return ADJECTIVES.setdefault(m, Adj(m, f, mp or _plural(m), fp or _plural(f)))


def noun_phrase(noun: Noun, definite: bool, adj: Adj | None = None, plural: bool = False,
                before: bool = False) -> str:
    """"la flor azul", "unos campos dorados"; before=True: "una pequeña águila"."""
    if adj is not None and before:
        # The article agrees with the word right after it: "un águila" but "una pequeña águila".
        return f"{_article(noun.gender, definite, plural)} {adj.form(noun.gender, plural)} {noun.form(plural)}"
    np = f"{noun.article(definite, plural)} {noun.form(plural)}"
    return f"{np} {adj.form(noun.gender, plural)}" if adj is not None else np


def _register(table: str) -> None:
    """Nouns written inside the patterns: "word g", "word g plural" or "word g*" (tonic a)."""
    for entry in table.split(","):
        parts = entry.split()
        if parts:
            gender = parts[1].rstrip("*")
            _noun(parts[0], gender, parts[2] if len(parts) > 2 else "", parts[1].endswith("*"))


_register("""
    abeja f, abrazo m, abrigo m, abuela f, abuelo m, adivinanza f, agua f*, aguja f, agujero m,
    ala f*, alegría f, aldea f, algodón m, amiga f, amigo m, anciana f, árbol m, arcoíris m arcoíris,
    arroyo m, aventura f, barco m, barranco m, barriga f, barro m, barrote m, batida f, bellota f,
    beso m, bicho m, boca f, bola f, bolsa f, borde m, bosque m, botón m, cabaña f, cabeza f,
    calle f, cama f, campanada f, campo m, camino m, canal m, canción f, candado m, caparazón m,
    cara f, carcajada f, carrera f, carro m, casa f, cascada f, castillo m, cauce m, cereza f,
    chimenea f, chispa f, chillido m, chiste m, ciervo m, cielo m, cima f, ciudad f, clavo m,
    cola f, colina f, color m, comida f, compañera f, concha f, copa f, corazón m, corral m,
    cosa f, cosecha f, costa f, cristal m, cucharilla f, cuello m, cuento m, cueva f, curandera f,
    día m, diente m, domingo m, dragón m, escalera f, espina f, establo m, estanque m, estrella f,
    faro m, favor m, fiesta f, fila f, final m, flor f, fondo m, forma f, fruta f, fuego m,
    gigante m, girasol m, gotita f, gracia f, granja f, grieta f, hermana f, hermanita f,
    hermanito m, hierba f, hilo m, hoguera f, hoja f, honor m, hora f, hoyo m, huella f, hueco m,
    hueso m, huerto m, idea f, infusión f, invierno m, jardín m, juguete m, laberinto m, ladera f,
    lágrima f, lago m, laguna f, lámpara f, lana f, lechuga f, lechuza f, leña f, llanura f,
    llave f, lluvia f, lomo m, lucecita f, luna f, madera f, madre f, madriguera f, madrina f,
    mañana f, manantial m, manzana f, mar m, margarita f, mariposa f, matorral m, médico m,
    miedo m, miel f, mimbre m, molino m, momento m, montaña f, montón m, muela f, mundo m, muro m,
    nariz f, nido m, niebla f, nieve f, noche f, nube f, ogro m, ojo m, ola f, oportunidad f,
    orilla f, oscuridad f, otoño m, padre m, padrino m, paja f, pájaro m, pajarito m, palabra f,
    palacio m, pañuelo m, papel m, pared f, pasadizo m, paso m, pata f, pico m, piedra f,
    piedrecita f, pino m, planta f, plata f, pluma f, primavera f, principio m, púa f, pueblecito m,
    pueblo m, puente m, puerto m, quejido m, ráfaga f, rama f, rastro m, rato m, recodo m, red f,
    reina f, relámpago m, reloj m, rincón m, roble m, roca f, rugido m, salida f, semana f,
    sendero m, sol m, sombra f, sonrisa f, suelo m, tabla f, tarde f, tarea f, tarro m, tejado m,
    tela f, telaraña f, ternura f, tesoro m, tienda f, tira f, tomate m, tormenta f, torre f,
    trapo m, trébol m, trigo m, tronco m, trozo m, trueno m, túnel m, valle m, ventana f, verano m,
    verja f, vecino m, viento m, violín m, vista f, voz f, zarzal m, zumbido m,
""")

_C = {c: _adj(c) for c in ("rojo", "azul", "amarillo", "verde", "blanco", "morado")}
for _m in ("pequeño", "viejo", "grande", "enorme", "alto", "largo", "dorado", "plateado",
           "brillante", "oscuro", "espeso", "frondoso", "silencioso", "encantado", "florido",
           "helado", "cristalino", "tranquilo", "estrecho", "colgante", "empinado", "suave",
           "nevado", "pedregoso", "seco", "escondido", "profundo", "ancho", "fresco", "claro",
           "calentito", "contento", "triste", "juguetón", "caliente", "nuevo", "sabio", "dulce",
           "fuerte", "hinchado"):
    _adj(_m)
_adj("mejor", "mejor")
_adj("joven", "joven", "jóvenes", "jóvenes")

# Personality traits: the adjective, and things a character with that trait did (imperfect).
_TRAITS: dict[Adj, tuple[str, ...]] = {
    _adj(t): clauses
    for t, clauses in {
        "valiente": ("no le tenía miedo a nada, ni siquiera a las tormentas",
                     "siempre era [h:el primero|la primera] en ofrecerse cuando había algo difícil que hacer"),
        "curioso": ("siempre quería saber el porqué de todas las cosas",
                    "lo miraba todo con los ojos muy abiertos"),
        "alegre": ("siempre iba cantando por el camino", "se reía por cualquier cosa"),
        "tímido": ("se ponía [h:colorado|colorada] cada vez que alguien le hablaba",
                   "casi nunca se atrevía a hablar con desconocidos"),
        "generoso": ("siempre compartía lo poco que tenía",
                     "nunca se guardaba nada para [h:sí mismo|sí misma]"),
        "travieso": ("siempre andaba [h:metido|metida] en algún lío", "no paraba de inventar bromas"),
        "amable": ("saludaba a todo el mundo con una sonrisa",
                   "siempre tenía una palabra bonita para los demás"),
        "soñador": ("se pasaba las tardes mirando las nubes",
                    "siempre estaba imaginando lugares lejanos"),
        "trabajador": ("se levantaba cada mañana antes que el sol",
                       "nunca dejaba una tarea a medias"),
        "despistado": ("siempre se olvidaba de dónde dejaba sus cosas",
                       "a menudo se equivocaba de camino"),
        "listo": ("sabía resolver cualquier adivinanza",
                  "siempre encontraba una solución para todo"),
        "risueño": ("tenía una risa que se oía desde muy lejos",),
        "inquieto": ("no podía estarse [h:quieto|quieta] ni un momento",),
        "tranquilo": ("nunca tenía prisa para nada",),
        "cariñoso": ("daba los mejores abrazos del mundo",),
        "bondadoso": ("siempre ayudaba a quien lo necesitaba",),
    }.items()
}

_HOBBIES = (
    "cantar canciones al atardecer", "mirar las estrellas por la noche",
    "recoger piedras de colores", "escuchar los cuentos de su abuela", "correr por el prado",
    "bailar bajo la lluvia", "contar las nubes del cielo", "hacer coronas de flores",
    "jugar al escondite con sus amigos", "explorar los rincones más escondidos",
    "silbar melodías inventadas", "saltar en los charcos", "coleccionar hojas secas",
    "inventar canciones nuevas", "buscar tréboles de cuatro hojas", "ver salir el sol",
    "dormir la siesta a la sombra de un árbol", "escuchar el canto de los pájaros",
    "mirar cómo caían las hojas en otoño", "contar historias de miedo a sus amigos",
    "preparar meriendas para toda la familia", "jugar con las mariposas del jardín",
)
_PERSON_HOBBIES = ("leer libros de aventuras", "pintar dibujos de animales", "tocar la flauta",
                   "hacer barquitos de papel", "dibujar mapas de lugares imaginarios",
                   "hacer cometas de papel", "cuidar las flores de su ventana")

# Where a hero lives: (prepositional phrase, the community it names later).
_PLACES: dict[str, tuple[tuple[str, str], ...]] = {
    "village": (("en un pueblo pequeño entre montañas", "el pueblo"),
                ("en una aldea rodeada de campos de trigo", "la aldea"),
                ("en un valle muy verde", "el valle"),
                ("en una ciudad de tejados rojos", "la ciudad"),
                ("en un pueblecito con una plaza y una fuente", "el pueblecito")),
    "coast": (("en una aldea junto al mar", "la aldea"), ("en un pueblo de pescadores", "el pueblo"),
              ("en una casita blanca cerca del puerto", "el puerto")),
    "castle": (("en un castillo sobre una colina", "el castillo"),
               ("en un palacio rodeado de jardines", "el palacio")),
    "mill": (("en un molino a la entrada del pueblo", "el pueblo"), ("en un molino junto al río", "el valle")),
    "forest": (("en una casita al borde del bosque", "el bosque"),
               ("en una cabaña en medio del bosque", "el bosque")),
    "wild": (("en un bosque muy grande", "el bosque"), ("en lo más profundo del bosque", "el bosque"),
             ("junto a un lago tranquilo", "el lago"), ("en un prado lleno de flores", "el prado"),
             ("a la orilla de un río", "el río"), ("en un viejo jardín", "el jardín"),
             ("en una colina cubierta de hierba", "la colina"), ("en un valle muy verde", "el valle")),
    "farm": (("en una granja cerca del pueblo", "la granja"),
             ("en una granja al pie de una colina", "la granja")),
    "magic": (("en un bosque encantado", "el bosque"), ("en una cueva de la montaña", "la montaña"),
              ("en una torre muy alta, en medio del valle", "el valle"), ("en un valle escondido entre las nubes", "el valle")),
}


@dataclass(frozen=True)
class _Kind:
    """What a character is: noun, species (conejo and coneja are one), group, intro adjectives, homes."""

    noun: Noun
    species: str
    group: str
    pre: tuple[Adj, ...]
    places: tuple[str, ...]


def _kinds(group: str, table: str) -> list[_Kind]:
    """Rows "noun g species pre1/pre2 place1/place2" (pre "-" for none; g* = tonic a)."""
    kinds = []
    for row in table.strip().splitlines():
        sg, g, species, pre, places = row.split()
        noun = _noun(sg, g.rstrip("*"), tonic_a=g.endswith("*"))
        adjs = () if pre == "-" else tuple(_adj(a) for a in pre.split("/"))
        kinds.append(_Kind(noun, species, group, adjs, tuple(places.split("/"))))
    return kinds


_HEROES = _kinds("person", """
    niño m niño pequeño village/coast/forest
    niña f niño pequeño village/coast/forest
    pastor m pastor joven/viejo village
    pastora f pastor joven/viejo village
    pescador m pescador joven/viejo coast
    pescadora f pescador joven/viejo coast
    leñador m leñador joven/viejo forest
    panadero m panadero joven/viejo village
    panadera f panadero joven/viejo village
    molinero m molinero joven/viejo mill
    molinera f molinero joven/viejo mill
    príncipe m príncipe joven castle
    princesa f príncipe joven castle
    campesino m campesino joven/viejo village/farm
    campesina f campesino joven/viejo village/farm
    zapatero m zapatero joven/viejo village
    costurera f costurera joven/viejo village
    jardinero m jardinero joven/viejo castle/village
    jardinera f jardinero joven/viejo castle/village
    marinero m marinero joven/viejo coast
""") + _kinds("animal", """
    conejo m conejo pequeño/viejo wild/farm
    coneja f conejo pequeño/viejo wild/farm
    ratoncito m ratón - wild/farm
    ratita f ratón - wild/farm
    tortuga f tortuga pequeño/viejo wild
    ardilla f ardilla pequeño wild
    erizo m erizo pequeño/viejo wild
    osito m oso - wild
    osita f oso - wild
    gatito m gato - farm/village
    gatita f gato - farm/village
    perrito m perro - farm/village
    perrita f perro - farm/village
    ranita f rana - wild
    patito m pato - farm/wild
    gallina f gallina pequeño/viejo farm
    cabrita f cabra - farm
    corderito m cordero - farm
    ovejita f oveja - farm
    zorro m zorro pequeño/viejo/joven wild
    lobito m lobo - wild
    caracol m caracol pequeño/viejo wild
    hormiga f hormiga pequeño wild
    grillo m grillo pequeño/viejo wild
    mariposa f mariposa pequeño wild
    burrito m burro - farm
    cerdito m cerdo - farm
    jirafa f jirafa joven wild
""") + _kinds("fantasy", """
    duende m duende pequeño/viejo magic/wild
    hada f* hada pequeño/joven magic
    gigante m gigante joven/viejo magic
    dragón m dragón pequeño/joven/viejo magic
    bruja f bruja joven/viejo magic
    mago m mago joven/viejo magic
    unicornio m unicornio pequeño/joven magic/wild
""")

_NAMES = {
    ("person", "m"): """Mateo Pablo Daniel Tomás Julián Martín Andrés Diego Nicolás Hugo Óscar
        Gonzalo Íñigo Joaquín Ramón Lucas Manuel Sergio Álvaro Rubén Jorge Simón Adrián Marcos
        Samuel Héctor Rafael Ángel Emilio Germán Jaime Luis Miguel Raúl Víctor Fermín""",
    ("person", "f"): """Lucía Sofía Marina Inés Carmen Elena Paula Clara Rosa Alba Irene Nuria
        Begoña Rocío Lola Maite Julia Martina Valeria Carlota Noelia Ana Beatriz Celia Eva Jimena
        Laura Lidia Marta Pilar Sara Teresa Aitana Blanca Candela Olivia""",
    ("animal", "m"): """Copito Bigotes Trueno Pipo Tino Rayo Canelo Pompón Botón Lucero Tambor
        Garbanzo Piñón Coco Nico Fideo Bizcocho Turrón Cascabel Pincho Ramiro Chispas Orejitas""",
    ("animal", "f"): """Canela Pelusa Perla Nube Luna Chispa Estrella Margarita Violeta Pimienta
        Bellota Pecas Mora Miel Rosita Manchitas Fresa Galleta Brisa Trufa Avellana Almendra""",
    ("fantasy", "m"): "Tomillo Romero Cardo Lucero Trueno Orégano Roble Granizo Azabache",
    ("fantasy", "f"): "Brisa Azucena Celeste Aurora Lavanda Estrella Centella Niebla Amapola",
}
_NAMES = {key: tuple(names.split()) for key, names in _NAMES.items()}

_FAMILY = (("su abuela", "f"), ("su abuelo", "m"), ("su madre", "f"), ("su padre", "m"),
           ("su hermanito", "m"), ("su hermana pequeña", "f"), ("su mejor amigo", "m"),
           ("su mejor amiga", "f"))
_GIVERS = (*_FAMILY[:4], ("su madrina", "f"), ("su padrino", "m"))

# --- Journeys: landscapes, helpers with their troubles, obstacles ------------------------------

# (verb, noun, adjectives that suit it): "atravesó el bosque oscuro", "cruzó el puente viejo", ...
_LANDSCAPES = {
    verb: [(_noun(sg, g), [_adj(a) for a in adjs.split("/")]) for sg, g, adjs in rows]
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
    noun: Noun
    species: str
    tags: frozenset[str]


def _helpers(table: str) -> dict[str, _Helper]:
    out = {}
    for row in table.strip().splitlines():
        sg, g, species, tags = row.split()
        noun = _noun(sg, g.rstrip("*"), tonic_a=g.endswith("*"))
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
_TROUBLES = (
    ("estaba [a:atrapado|atrapada] en una red", "deshizo los nudos uno a uno hasta [a:liberarlo|liberarla]", "land"),
    ("estaba [a:atrapado|atrapada] en una red", "deshizo los nudos con paciencia hasta [a:liberarlo|liberarla]", "water"),
    ("tenía una espina clavada en la pata", "le sacó la espina con mucho cuidado", "legs"),
    ("tenía un ala herida y no podía volar",
     "le vendó el ala con una tira de tela y [a:lo|la] dejó descansando en un lugar seguro", "wings"),
    ("tenía tanta hambre que apenas podía moverse", "compartió con [a:él|ella] su comida", "land"),
    ("se había caído en un hoyo y no podía salir", "le acercó una rama larga y [a:lo|la] ayudó a salir", "legs"),
    ("lloraba porque su nido se había caído del árbol", "volvió a colocar el nido en una rama alta y segura", "nest"),
    ("se había quedado en un charco que se estaba secando", "[a:lo|la] llevó con cuidado hasta el río", "water"),
    ("se había perdido y no sabía volver a casa", "le indicó el camino de vuelta", "land"),
)


@dataclass(frozen=True)
class _Obstacle:
    intros: tuple[str, ...]
    worry: str  # "cruzar este río": what the hero cannot do
    solves: dict[str, tuple[str, ...]]  # helper -> how it gets the hero past
    avoid: str = ""  # a landscape noun that would clash on the road before it


_OBSTACLES = (
    _Obstacle(
        ("<Al cabo de un rato|Más adelante>, llegó a un río tan ancho y tan profundo que no se veía ningún puente.",
         "De pronto, el camino terminó en la orilla de un río ancho y revuelto."),
        "cruzar este río",
        {"tortuga": ("{A:cap} le dijo que subiera a su caparazón y, despacio, muy despacio, [h:lo|la] llevó hasta la otra orilla.",),
         "castor": ("{A:cap} llamó a toda su familia y, entre todos, tendieron un puente de troncos de una orilla a la otra.",),
         "pato": ("{A:cap} le enseñó un lugar, un poco más abajo, donde el río era tan poco profundo que se podía cruzar saltando de piedra en piedra.",),
         "pez": ("{A:cap} nadó delante de {H} y le mostró un camino de piedras escondidas bajo el agua por el que pudo cruzar sin mojarse.",)},
        "río",
    ),
    _Obstacle(
        ("Más adelante, una pared de roca altísima le cerraba el paso.",
         "Al final del sendero se alzaba una pared de roca tan alta que parecía tocar las nubes."),
        "subir esta pared",
        {"cabra": ("{A:cap} conocía un sendero secreto entre las rocas y, saltando de piedra en piedra, [h:lo|la] guio hasta arriba.",),
         "águila": ("{A:cap} [h:lo|la] subió a su lomo, extendió sus grandes alas y [h:lo|la] llevó volando hasta lo más alto.",),
         "golondrina": ("{A:cap} voló de un lado a otro hasta encontrar una grieta con escalones de piedra, y le enseñó por dónde subir.",)},
    ),
    _Obstacle(
        ("Al anochecer, una niebla tan espesa lo cubrió todo que no se veía nada.",
         "<Poco después|Al caer la tarde> se hizo de noche, y estaba tan oscuro que {H} ya no distinguía el camino."),
        "encontrar el camino <en esta oscuridad|sin ver nada>",
        {"luciérnaga": ("{A:cap} llamó a sus hermanas y, en un momento, cientos de lucecitas iluminaron el camino.",),
         "búho": ("{A:cap}, que veía muy bien en la oscuridad, voló delante de {H} y [h:lo|la] guio entre los árboles.",),
         "murciélago": ("{A:cap}, que sabía orientarse sin ver, voló delante de {H} y le fue indicando el camino con sus chillidos.",)},
    ),
    _Obstacle(
        ("Más adelante, una verja de hierro cerrada con un candado enorme le cortaba el paso.",
         "El sendero terminaba ante una verja de hierro, y el candado estaba bien cerrado."),
        "abrir esta verja",
        {"ratoncito": ("{A:cap} se coló entre los barrotes, encontró la llave colgada de un clavo y se la trajo a {H}.",),
         "urraca": ("{A:cap} voló hasta su nido y volvió con una llave pequeña y brillante en el pico. ¡Era justo la llave del candado!",)},
    ),
    _Obstacle(
        ("De repente, el cielo se puso negro y empezó una tormenta terrible, con truenos y relámpagos.",
         "<A mitad de camino|Aquella tarde>, estalló una tormenta tan fuerte que el viento doblaba los árboles."),
        "seguir con esta tormenta",
        {"oso": ("{A:cap} le mostró una cueva seca y caliente, y allí esperaron juntos a que pasara la tormenta.",),
         "ardilla": ("{A:cap} le enseñó el hueco de un árbol enorme, donde {H} pudo refugiarse hasta que volvió a salir el sol.",),
         "conejo": ("{A:cap} [h:lo|la] llevó hasta su madriguera, y allí esperaron juntos, calentitos, a que pasara la tormenta.",)},
    ),
    _Obstacle(
        ("Para seguir había que cruzar un puente, pero en él vivía un ogro gruñón que no dejaba pasar a nadie.",),
        "pasar por ese puente",
        {"grillo": ("{A:cap} empezó a cantar una canción tan dulce que el ogro bostezó, cerró los ojos y se quedó profundamente dormido. {H} cruzó el puente de puntillas.",),
         "ruiseñor": ("{A:cap} cantó una nana tan bonita que el ogro se durmió sentado, y {H} cruzó el puente de puntillas.",)},
        "puente",
    ),
    _Obstacle(
        ("Al final del sendero, un zarzal enorme, lleno de espinas, le cerraba el paso.",
         "<Más adelante|Poco después>, el camino desaparecía bajo un zarzal enorme, lleno de espinas."),
        "atravesar estas zarzas",
        {"topo": ("{A:cap} cavó un túnel por debajo del zarzal, y los dos pasaron al otro lado sin pincharse.",),
         "conejo": ("{A:cap} le enseñó un pasadizo secreto entre las ramas, tan escondido que nadie más lo conocía.",)},
    ),
    _Obstacle(
        ("De pronto, el camino se cortaba: delante había un barranco tan profundo que no se veía el fondo.",
         "<Más adelante|Al cabo de un rato>, llegó al borde de un barranco muy profundo, y el puente que lo cruzaba se había caído."),
        "llegar al otro lado",
        {"castor": ("{A:cap} royó el tronco de un pino alto hasta que cayó sobre el barranco, y {H} cruzó por él como por un puente.",),
         "águila": ("{A:cap} [h:lo|la] subió a su lomo y, con dos batidas de sus grandes alas, [h:lo|la] dejó al otro lado.",),
         "araña": ("{A:cap} tejió durante toda la noche un puente de hilo tan fuerte que, a la mañana siguiente, {H} pudo cruzarlo sin miedo.",)},
    ),
    _Obstacle(
        ("Al entrar en el bosque, los senderos se cruzaban y se separaban una y otra vez, como en un laberinto.",
         "<Más adelante|Poco después>, {H} se perdió en un laberinto de senderos que daban vueltas y más vueltas."),
        "salir de este laberinto",
        {"hormiga": ("{A:cap} llamó a sus compañeras, que formaron una larga fila por el sendero bueno, y {H} solo tuvo que seguirlas.",),
         "paloma": ("{A:cap} voló muy alto, miró los senderos desde el cielo y le fue indicando por dónde ir.",),
         "búho": ("{A:cap}, que conocía cada árbol del bosque, voló delante de {H} y [h:lo|la] guio hasta la salida.",)},
    ),
)

# --- Plot material ----------------------------------------------------------------------------

# The cure: a plant, a colour or shine, and where it grows (phrase, place reached).
_REMEDIES = [_noun(n, g) for n, g in (("flor", "f"), ("hierba", "f"), ("raíz", "f"), ("hoja", "f"),
                                      ("trébol", "m"), ("lirio", "m"), ("musgo", "m"), ("helecho", "m"))]
_REMEDY_ADJS = [_adj(a) for a in ("dorado", "plateado", "azul", "morado", "blanco", "brillante")]
_GROWS = (("en la cima de la montaña más alta", "la cima de la montaña más alta"),
          ("en el fondo de un valle escondido", "el fondo del valle escondido"),
          ("junto al manantial de la luna", "el manantial de la luna"),
          ("al otro lado del bosque encantado", "el otro lado del bosque encantado"),
          ("a la orilla de la laguna de plata", "la orilla de la laguna de plata"),
          ("detrás de la gran cascada", "la gran cascada"),
          ("en el jardín de un viejo gigante", "el jardín del viejo gigante"))
_HEALERS = {
    "person": ("la vieja curandera de {Pr}", "el médico de {Pr}", "una anciana muy sabia"),
    "animal": ("la vieja lechuza del bosque", "el viejo ciervo del bosque"),
    "fantasy": ("la vieja curandera de {Pr}", "el hada más anciana del bosque"),
}

# The dream: (what, where it is, how far, what the hero saw there).
_WISHES = (
    ("ver el mar", "la costa", "Pero la costa estaba muy lejos, más allá de los bosques y las colinas.",
     ("Al bajar la última colina, apareció ante sus ojos el mar, azul y inmenso, con olas que brillaban bajo el sol.",
      "{H} se acercó a la orilla y dejó que las olas le hicieran cosquillas. ¡Era aún más bonito de lo que había soñado!")),
    ("tocar la nieve", "las montañas del norte", "Pero las montañas del norte estaban muy lejos, y nadie de {Pr} había ido nunca hasta allí.",
     ("Allí todo estaba cubierto de nieve, blanca y suave como el algodón.",
      "{H} hizo bolas de nieve, dejó sus huellas por todas partes y se rio hasta que le dolió la barriga.")),
    ("ver las estrellas de cerca", "la cima de la montaña más alta", "Pero la montaña más alta estaba muy lejos, y el camino era largo y difícil.",
     ("Cuando llegó la noche, el cielo se llenó de estrellas.",
      "Estaban tan cerca que parecía que se podían tocar, y {H} se quedó mirándolas hasta quedarse [h:dormido|dormida].")),
    ("encontrar el final del arcoíris", "el final del arcoíris", "Pero el arcoíris siempre parecía estar detrás de la siguiente colina.",
     ("Allí no había ningún tesoro, sino un valle lleno de flores de todos los colores.",
      "{H} sonrió, porque comprendió que el verdadero tesoro era todo lo que había vivido por el camino.")),
    ("ver la gran cascada", "la gran cascada", "Pero la gran cascada estaba muy lejos, escondida entre las montañas.",
     ("El agua caía desde tan alto que formaba una nube de gotitas donde brillaba un pequeño arcoíris.",
      "{H} se sentó en una roca y estuvo mirándola durante horas, sin cansarse.")),
    ("conocer la gran ciudad", "la gran ciudad", "Pero la gran ciudad estaba a muchos días de camino.",
     ("Había calles llenas de gente, tiendas de mil colores y una torre con un reloj enorme que daba las horas con campanadas.",
      "{H} lo miraba todo con la boca abierta, y pensó que nunca olvidaría aquel día.")),
    ("ver los campos de girasoles", "la llanura de los girasoles", "Pero la llanura de los girasoles estaba muy lejos, al otro lado de las montañas.",
     ("Miles de girasoles, altos y dorados, giraban despacio para mirar al sol.",
      "{H} se tumbó entre ellos y se quedó escuchando el zumbido de las abejas hasta que se hizo de noche.")),
    ("conocer el bosque de los árboles gigantes", "el bosque de los árboles gigantes",
     "Pero aquel bosque estaba muy lejos, y solo los pájaros sabían el camino.",
     ("Los árboles eran tan altos que sus copas se perdían entre las nubes.",
      "{H} abrazó uno de los troncos, tan grueso que ni diez amigos juntos habrían podido rodearlo.")),
)

# The lost treasure: noun, its description (adjectives or a fixed phrase), who can take it.
_OBJECTS = (
    ("flauta", "f", ("de madera",), "toy"), ("pañuelo", "m", tuple(_C.values()), "soft/light"),
    ("sombrero", "m", ("de paja", _C["verde"], _C["amarillo"]), "light/toy"),
    ("muñeca", "f", ("de trapo",), "soft/toy"), ("pelota", "f", (_C["rojo"], _C["azul"], "de colores"), "toy"),
    ("cometa", "f", ("de colores", _C["rojo"], _C["amarillo"]), "light"),
    ("bufanda", "f", ("de lana", _C["rojo"], _C["verde"], _C["azul"]), "soft"),
    ("collar", "m", ("de conchas",), "shiny"), ("campanita", "f", ("de plata",), "shiny"),
    ("gorro", "m", ("de lana", _C["rojo"], _C["azul"]), "soft/light/toy"),
    ("llave", "f", (_adj("dorado"),), "shiny"), ("anillo", "m", ("de plata",), "shiny"),
    ("canica", "f", ("de cristal",), "shiny/toy"), ("silbato", "m", ("de plata",), "shiny/toy"),
    ("lazo", "m", (_C["rojo"], _C["azul"], _C["amarillo"]), "light"),
    ("peonza", "f", ("de madera",), "toy"), ("cascabel", "m", ("de plata",), "shiny/toy"),
    ("globo", "m", (_C["rojo"], _C["azul"], _C["amarillo"]), "light"),
    ("molinillo", "m", ("de papel",), "light/toy"), ("caracola", "f", (_adj("rosado"),), "shiny"),
    ("cesta", "f", ("de mimbre",), "soft"), ("gorra", "f", (_C["azul"], _C["verde"]), "soft/light"),
)
_OBJECTS = tuple((_noun(sg, g), desc, frozenset(tags.split("/"))) for sg, g, desc, tags in _OBJECTS)

# Neighbours asked about the lost treasure: noun, species, what they were doing when found.
_WITNESSES = tuple((_noun(sg, g), sp, doing) for sg, g, sp, doing in (
    ("vaca", "f", "vaca", "pastando en el prado"), ("pato", "m", "pato", "nadando en el estanque"),
    ("gallina", "f", "gallina", "picoteando granos en el corral"),
    ("caracol", "m", "caracol", "paseando despacito por el muro"),
    ("rana", "f", "rana", "tomando el sol sobre una hoja"),
    ("oveja", "f", "oveja", "descansando a la sombra de un árbol"),
    ("burro", "m", "burro", "comiendo hierba junto al establo"), ("cabra", "f", "cabra", "subida a una roca"),
    ("ardilla", "f", "ardilla", "recogiendo bellotas"), ("topo", "m", "topo", "asomado a la puerta de su túnel"),
    ("abeja", "f", "abeja", "volando de flor en flor"), ("mariposa", "f", "mariposa", "posada en una margarita"),
    ("tortuga", "f", "tortuga", "dormitando al sol"), ("paloma", "f", "paloma", "posada en el tejado"),
    ("lagartija", "f", "lagartija", "calentándose sobre una piedra"),
    ("grillo", "m", "grillo", "afinando su violín"),
))
_REFERRALS = ("que siempre sabe todo lo que pasa por aquí", "que pasa el día mirando el camino",
              "que tiene muy buena vista", "que conoce cada rincón de este lugar")

# Who took it: the clue a neighbour gives, the tags of what it takes, its species.
_CULPRITS = {
    "urraca": ("a una urraca que [o:lo|la] llevaba en el pico hacia el viejo pino", "shiny", "urraca"),
    "ratones": ("a unos ratoncitos que [o:lo|la] arrastraban hacia su agujero", "soft", "ratón"),
    "cachorro": ("a un cachorro que corría hacia el río con [o:él|ella] en la boca", "toy", "perro"),
    "viento": ("cómo una ráfaga de viento [o:lo|la] arrastraba hacia el bosque", "light", "viento"),
    "cabra": ("a una cabra que [o:lo|la] mordisqueaba detrás del establo", "soft", "cabra"),
}
_noun("cachorro", "m")

# Newcomers nobody wanted to play with: kinds, intro adjective, why, the day they saved.
_NEWCOMERS = (
    (("oso m", "osa f"), "oso", "enorme", ("animal", "fantasy"),
     ("Era tan grande y tan fuerte que todos se apartaban al [n:verlo|verla] pasar.",
      "Era tan grande que los demás se escondían en cuanto [n:lo|la] veían llegar."),
     ("<Una tarde de viento|Una noche de tormenta>, un árbol enorme cayó sobre el puente del arroyo, y nadie podía volver a casa. Todos empujaron el tronco, pero no se movía ni un poco.",
      "Entonces llegó {N}, <levantó el tronco como si fuera una pluma|apartó el tronco de un solo empujón> y lo dejó a un lado del camino.")),
    (("jirafa f",), "jirafa", "alto", ("animal",),
     ("Tenía el cuello tan largo que los demás se reían de ella a escondidas.",
      "Era tan alta que los demás decían que parecía un árbol con patas."),
     ("<Un día|Una mañana de primavera>, un pajarito se cayó de su nido, que estaba en lo alto de un árbol altísimo, y nadie podía llegar hasta allí para devolverlo.",
      "Entonces {N} estiró su largo cuello y <dejó al pajarito en su nido con mucho cuidado|devolvió al pajarito a su nido, junto a sus hermanos>.")),
    (("dragón m",), "dragón", "pequeño", ("animal", "person", "fantasy"),
     ("Cuando estornudaba, le salían chispas por la nariz, y todos tenían miedo de quemarse.",
      "Echaba humo por la nariz cuando se reía, y a todos les daba miedo."),
     ("<Aquel invierno|Una noche de enero> llegó una helada terrible. La leña estaba mojada y nadie conseguía encender el fuego.",
      "Entonces {N} respiró hondo, sopló con cuidado y encendió una hoguera enorme. Todos se sentaron a su alrededor, <calentitos y contentos|cantando y riendo>.")),
    (("erizo m",), "erizo", "pequeño", ("animal",),
     ("Tenía el lomo cubierto de púas, y nadie quería acercarse a él por miedo a pincharse.",
      "Como tenía púas por todo el cuerpo, nadie quería jugar con él."),
     ("Un día de otoño, todos querían recoger las manzanas del árbol más alto del prado, pero las manzanas caían y rodaban cuesta abajo hasta perderse entre la hierba.",
      "Entonces {N} se hizo una bola, rodó por la cuesta y volvió con un montón de manzanas clavadas en sus púas.")),
    (("lobo m", "loba f"), "lobo", "joven", ("animal",),
     ("Todos decían que los lobos eran malos, así que nadie quería jugar con [n:él|ella].",
      "Tenía los dientes tan grandes que todos huían al [n:verlo|verla], aunque nunca había hecho daño a nadie."),
     ("<Una tarde|Un día de niebla>, la hermanita pequeña de {H} se perdió en el bosque y, cuando se hizo de noche, todos estaban muy preocupados.",
      "{N} olfateó el suelo, siguió su rastro entre los árboles y, al poco rato, volvió con ella sana y salva.")),
    (("murciélago m",), "murciélago", "pequeño", ("animal", "fantasy"),
     ("Dormía boca abajo durante el día y volaba de noche, y a todos les parecía muy raro.",
      "Como dormía de día y volaba de noche, los demás decían que era un bicho raro."),
     ("Una noche sin luna, {H} y sus amigos volvían de una fiesta y se perdieron en el bosque.",
      "{N}, que sabía orientarse en la oscuridad, voló delante de ellos y los guio hasta casa.")),
    (("topo m",), "topo", "pequeño", ("animal",),
     ("Veía tan poco que siempre se chocaba con todo, y los demás se reían de él.",
      "Como casi no veía, caminaba a tientas, y los demás se burlaban de él."),
     ("<Aquel verano|Un verano muy seco>, el huerto se quedó sin agua, y las lechugas y los tomates empezaron a secarse.",
      "Entonces {N} cavó un canal desde el arroyo hasta el huerto, y el agua llegó a todas las plantas.")),
    (("gigante m",), "gigante", "enorme", ("person", "fantasy"),
     ("Era tan grande que, cuando caminaba, hacía temblar el suelo, y todos salían corriendo.",
      "Era tan alto como una torre, y los vecinos cerraban las ventanas cuando lo veían pasar."),
     ("<Un día de lluvia|Una tarde de otoño>, el carro con todas las manzanas de la cosecha se quedó atascado en el barro, y ni diez caballos habrían podido sacarlo.",
      "{N} lo levantó con una sola mano y lo dejó en el camino, sin que se cayera ni una manzana.")),
)
_NEWCOMERS = tuple(
    (tuple(_noun(*k.split()) for k in kinds), sp, _adj(adj), groups, why, rescue)
    for kinds, sp, adj, groups, why, rescue in _NEWCOMERS
)

# Friends who come to push a rock: (definite noun phrase, species) by group.
_CREW = {
    "animal": (("el oso", "oso"), ("la cabra", "cabra"), ("el burro", "burro"), ("la vaca", "vaca"),
               ("el caballo", "caballo"), ("el jabalí", "jabalí"), ("el ciervo", "ciervo")),
    "person": (("el herrero", "herrero"), ("la panadera", "panadero"), ("el molinero", "molinero"),
               ("la pastora", "pastor"), ("el leñador", "leñador"), ("la costurera", "costurera")),
}
_CREW["fantasy"] = _CREW["animal"]
for _sg, _g in (("vaca", "f"), ("caballo", "m"), ("jabalí", "m"), ("paloma", "f"), ("lagartija", "f")):
    _noun(_sg, _g, "jabalíes" if _sg == "jabalí" else "")

_MORALS = {
    "kind": ("ayudar a los demás siempre trae cosas buenas",
             "un pequeño gesto de bondad puede cambiarlo todo",
             "quien ayuda a otros nunca camina solo",
             "el valor no consiste en no tener miedo, sino en seguir adelante"),
    "wish": ("los sueños se cumplen con valor y paciencia", "los sueños están para perseguirlos",
             "el mundo es grande y está lleno de maravillas"),
    "urraca": ("ser amable es la mejor manera de arreglar las cosas",
               "un amigo vale más que todas las cosas que brillan"),
    "ratones": ("compartir lo que uno quiere también es una forma de cariño",
                "las cosas que queremos valen todavía más cuando se comparten"),
    "cachorro": ("un amigo vale más que cualquier juguete",
                 "a veces, quien nos quita algo solo necesita un amigo"),
    "viento": ("los amigos siempre te ayudan a encontrar lo que has perdido",
               "pedir ayuda no tiene nada de malo"),
    "cabra": ("hablando se entiende la gente", "con paciencia y cariño todo se arregla"),
    "friend": ("no hay que juzgar a nadie por su aspecto", "las diferencias nos hacen especiales",
               "un amigo puede estar donde menos lo esperas", "cualquiera merece una oportunidad"),
    "build": ("juntos somos más fuertes", "trabajando juntos se puede construir cualquier cosa"),
    "together": ("juntos somos más fuertes", "cuando todos empujan, no hay roca que se resista"),
    "giant": ("una sonrisa puede calentar hasta el invierno más frío",
              "escuchar a los demás puede arreglar lo que parece imposible"),
    "dragon": ("el valor no consiste en no tener miedo, sino en seguir adelante",
               "no hay que juzgar a nadie sin conocerlo"),
    "lighthouse": ("el valor no consiste en no tener miedo, sino en seguir adelante",
                   "hasta una luz pequeña puede guiar a muchos"),
    "bees": ("hasta [h:el más pequeño|la más pequeña] puede hacer cosas muy grandes",
             "cuidar de la naturaleza es cuidar de todos"),
}

# --- Pattern expansion ------------------------------------------------------------------------

_GENDER = re.compile(r"\[(\w+):([^|\]]*)\|([^\]]*)\]")
_CHOICE = re.compile(r"<([^<>]*)>")
_CONTRACT = re.compile(r"\b([Dd]e|[Aa]) el\b")
_Y_TO_E = re.compile(r"\by (?=[iIíÍ]|[hH][iIíÍ](?![aeoáéó]))")
_O_TO_U = re.compile(r"\bo (?=[oOóÓ]|[hH][oOóÓ])")


def _capitalize(text: str) -> str:
    for i, ch in enumerate(text):
        if ch.isalpha():
            return text[:i] + ch.upper() + text[i + 1:]
    return text


class _Phrase(str):
    """A value for a pattern slot; "{A:cap}" writes it with a capital letter."""

    def __format__(self, spec: str) -> str:
        return _capitalize(self) if spec == "cap" else format(str(self), spec)


class _Tale:
    """One tale being written: the cast (genders by role), slot values, paragraphs."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.slots: dict[str, _Phrase] = {}
        self.genders: dict[str, str] = {}
        self.paragraphs: list[str] = []
        self.place_tag = ""  # which _PLACES list the hero's home came from

    def cast(self, role: str, gender: str, **slots: str) -> None:
        self.genders[role] = gender
        self.fill(**slots)

    def fill(self, **slots: str) -> None:
        for key, value in slots.items():
            self.slots[key] = _Phrase(self.expand(value, capital=False))

    def expand(self, pattern: str, capital: bool = True) -> str:
        if "[" in pattern:
            pattern = _GENDER.sub(lambda m: m[2] if self.genders[m[1]] == "m" else m[3], pattern)
        if "<" in pattern:
            pattern = _CHOICE.sub(lambda m: self.rng.choice(m[1].split("|")), pattern)
        if "{" in pattern:
            pattern = pattern.format_map(self.slots)
        return _capitalize(pattern) if capital else pattern

    def say(self, *options: str | Sequence[str] | None) -> str:
        """Expand each part (a pattern, or a sequence to pick one from) into one paragraph."""
        parts = []
        for option in options:
            pattern = option if option is None or isinstance(option, str) else self.rng.choice(option)
            if pattern is not None:  # None in a sequence: this time, say nothing
                parts.append(self.expand(pattern))
        return " ".join(parts)

    def para(self, *options: str | Sequence[str] | None) -> None:
        self.paragraphs.append(self.say(*options))

    def text(self) -> str:
        text = "\n".join(self.paragraphs)
        text = _CONTRACT.sub(lambda m: m[1][0] + ("el" if m[1] in ("de", "De") else "l"), text)
        text = _Y_TO_E.sub("e ", text)
        text = _O_TO_U.sub("u ", text)
        return unicodedata.normalize("NFC", text)


# --- The plots --------------------------------------------------------------------------------


def _hero(t: _Tale, hobby_chance: float) -> _Kind:
    """Cast the hero and write the opening paragraph."""
    rng = t.rng
    kind = rng.choice(_HEROES)
    noun, g = kind.noun, kind.noun.gender
    trait = rng.choice(list(_TRAITS))
    t.place_tag = rng.choice(kind.places)
    place, community = rng.choice(_PLACES[t.place_tag])
    t.cast("h", g, H=rng.choice(_NAMES[kind.group, g]), Hn=noun.sg,
           Hun=noun.article(False), T=trait.form(g), Tc=rng.choice(_TRAITS[trait]), P=place, Pr=community)

    called = rng.choice(("llamad[h:o|a] {H}", "que se llamaba {H}"))
    intros = [(f"{noun_phrase(noun, False, trait)} {called}", True),
              (f"{noun_phrase(noun, False)} muy {{T}} {called}", True)]
    if kind.pre:
        intros.append((f"{noun_phrase(noun, False, rng.choice(kind.pre), before=True)} {called}", False))
    intro, told_trait = rng.choice(intros)
    t.fill(Hi=intro)
    openings = ["Había una vez, {P}, {Hi}."]
    if called.startswith("llamad"):  # "que se llamaba Lucía que vivía..." would stumble
        openings += ["Había una vez {Hi} que vivía {P}."] * 2
    if rng.random() < 0.72:
        opening = rng.choice(openings)
    else:
        opening = rng.choice(("Hace mucho tiempo, {P}, vivía {Hi}.", "Hace muchos años, {P}, vivía {Hi}.",
                              "{P:cap} vivía una vez {Hi}."))
    describe = ["{H} {Tc}.", "Todos en {Pr} sabían que {H} {Tc}."]
    if not told_trait:
        describe += ["{H} era {Hun} {Hn} muy {T}: {Tc}."] * 2
    hobbies = _HOBBIES + (_PERSON_HOBBIES if kind.group == "person" else ())
    hobby = rng.choice(("Le encantaba {}.", "Lo que más le gustaba en el mundo era {}.",
                        "Su pasatiempo favorito era {}.")).format(rng.choice(hobbies))
    t.para(opening, describe, hobby if rng.random() < hobby_chance else None)
    return kind


def _journey(t: _Tale, avoid: set[str]) -> None:
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
    adj = None if rng.random() < 0.4 else rng.choice((_adj("viejo"), _adj("pequeño")))
    t.cast("a", hn.gender, A=noun_phrase(hn, True), Ai=noun_phrase(hn, False, adj))

    roads = []
    for verb in rng.sample(list(_LANDSCAPES), rng.choice((1, 2, 2, 3))):
        noun, adjs = rng.choice([row for row in _LANDSCAPES[verb] if row[0].sg != obstacle.avoid])
        roads.append(f"{verb} {noun_phrase(noun, True, rng.choice(adjs))}")
    walk = f"<Caminó|Anduvo> durante {rng.choice(_DURATIONS)}"
    if len(roads) == 1:
        walk += f" y {roads[0]}."
    else:
        walk += ". " + _capitalize(", ".join(roads[:-1]) + " y " + roads[-1]) + "."
    worry = (f"—¿Cómo voy a {obstacle.worry}? —se preguntó {{H}}, [h:preocupado|preocupada].",
             f"—¿Y ahora cómo voy a {obstacle.worry}? —suspiró {{H}}.")
    if rng.random() < 0.5:
        trouble, fix, _ = rng.choice([tr for tr in _TROUBLES if tr[2] in helper.tags])
        meet = ((f"Al pasar junto a un estanque, vio a {{Ai}} que {trouble}.",) if "water" in helper.tags else
                (f"<Por el camino|A mitad de camino|En un recodo del sendero>, encontró a {{Ai}} que {trouble}.",
                 f"De pronto oyó un quejido. Era {{Ai}}, que {trouble}."))
        t.para(walk, meet,
               (f"{{H}} {fix}.", f"Sin pensarlo dos veces, {{H}} {fix}."))
        t.para(("—Muchas gracias —dijo {A}—. Algún día te devolveré el favor.",
                "—Gracias, [h:amigo|amiga] —dijo {A}—. Nunca olvidaré lo que has hecho por mí.",
                "—Eres muy amable —dijo {A}—. Si algún día necesitas ayuda, no dudes en llamarme."))
        t.para(obstacle.intros)
        if rng.random() < 0.4:
            t.para(worry)
        t.para(("En ese momento apareció {A}, [a:al que|a la que] había ayudado en el camino.",
                "Entonces oyó una voz conocida: era {A}, [a:al que|a la que] había ayudado en el camino."),
               ("«Ahora me toca a mí ayudarte», le dijo.", None),
               obstacle.solves[helper_key])
    else:
        t.para(walk, obstacle.intros)
        t.para(worry)
        t.para(("En ese momento pasó por allí {Ai}<, que lo había oído todo|>.",
                "Entonces se le acercó {Ai}."),
               ("«Yo te ayudaré», le dijo.", "«No te preocupes, yo sé cómo hacerlo», le dijo."),
               obstacle.solves[helper_key])


def _plot_cure(t: _Tale, kind: _Kind) -> str:
    rng = t.rng
    family, fg = rng.choice(_FAMILY)
    remedy = rng.choice(_REMEDIES)
    radj = rng.choice(_REMEDY_ADJS)
    grows, reached = rng.choice(_GROWS)
    healer = rng.choice(_HEALERS[kind.group])
    t.cast("f", fg, F=family)
    t.cast("o", remedy.gender, O=noun_phrase(remedy, True, radj), Oi=noun_phrase(remedy, False, radj),
           G=grows, Ga=reached)
    t.fill(Q=healer)
    t.para("<Un día|Una mañana de invierno|Un otoño|Cierto día>, {F} se puso muy [f:enfermo|enferma].",
           ("Tenía fiebre y no podía levantarse de la cama.", "Tosía sin parar y estaba muy [f:pálido|pálida].",
            None, None),
           ("{Q:cap} dijo que solo {Oi} podría [f:curarlo|curarla], y que crecía {G}.",
            "Según {Q}, solo {Oi}, que crecía {G}, podría [f:curarlo|curarla]."))
    if rng.random() < 0.5:
        t.para("<{H} no lo dudó ni un momento|{H} se armó de valor>: "
               "<metió en una bolsa un poco de pan|preparó algo de comida> y, al amanecer, se puso en camino.")
    else:
        t.para("—Yo iré a [o:buscarlo|buscarla] —dijo {H}—. Volveré pronto, te lo prometo.")
    _journey(t, {kind.species})
    t.para("<Por fin|Al fin|Después de tanto caminar>, {H} llegó a {Ga}<, y allí, entre las rocas,| y allí> encontró {O}.",
           "[o:Lo|La] recogió con mucho cuidado y volvió a casa tan deprisa como pudo.")
    t.para("Preparó una infusión con {O} y se la dio a beber a {F}.",
           "<Al día siguiente|A la mañana siguiente>, {F} se levantó de la cama, [f:curado|curada] y con ganas de <cantar|dar un paseo|reír>.")
    if rng.random() < 0.5:
        t.para("—Gracias, {H} —le dijo {F}, con los ojos llenos de alegría—. Sin ti no me habría curado.")
    return "kind"


def _plot_wish(t: _Tale, kind: _Kind) -> str:
    rng = t.rng
    wishes = [w for w in _WISHES if not (w[0] == "ver el mar" and t.place_tag == "coast")]
    dream, reached, far, seen = rng.choice(wishes)
    family, fg = rng.choice(_FAMILY[:4])
    t.cast("f", fg, F=family)
    t.fill(W=dream, Ga=reached)
    t.para(("{H} tenía un sueño: quería {W}.", "Desde [h:pequeño|pequeña], {H} soñaba con {W}.",
            "Más que nada en el mundo, {H} deseaba {W}."),
           far)
    t.para("<Un día|Una mañana de primavera>, {H} decidió que ya era hora de cumplir su sueño.",
           "Se despidió de {F}, que le dio <un abrazo y una bolsa con comida|un beso y una bufanda calentita>, y se puso en camino.")
    _journey(t, {kind.species})
    t.para("<Por fin|Al fin|Después de tanto caminar>, {H} llegó a {Ga}.", *seen)
    if rng.random() < 0.6:
        t.para("Unos días después volvió a {Pr}.",
               ("{F:cap} [h:lo|la] estaba esperando, y {H} le contó su aventura de principio a fin.",
                "Esa noche, junto al fuego, le contó a {F} todo lo que había visto."))
    return rng.choice(("kind", "wish"))


def _plot_lost(t: _Tale, kind: _Kind) -> str:
    rng = t.rng

    def takers(tags: frozenset[str]) -> list[str]:  # who could have taken it (never the hero's kin)
        return [c for c, (_, tag, sp) in _CULPRITS.items() if tag in tags and sp != kind.species]

    noun, descs, tags = rng.choice([obj for obj in _OBJECTS if takers(obj[2])])
    desc = rng.choice(descs)
    d = desc if isinstance(desc, str) else desc.form(noun.gender)
    giver, gg = rng.choice(_GIVERS)
    culprit = rng.choice(takers(tags))
    t.cast("o", noun.gender, O=f"{noun_phrase(noun, True)} {d}", Oi=f"{noun_phrase(noun, False)} {d}",
           Op=f"su {noun.sg} {d}", Om=f"mi {noun.sg} {d}", Ot=f"tu {noun.sg} {d}")
    t.cast("g", gg, Gv=giver)
    t.para("{H} tenía {Oi} que le había regalado {Gv}<, y [o:lo|la] llevaba a todas partes| y que cuidaba como un tesoro>.")
    t.para("Pero <una tarde|un día>, después de <jugar en el prado|pasear junto al río|dar un paseo por el bosque>, {H} se dio cuenta de que ya no tenía {Op}.",
           "[o:Lo|La] buscó <por todas partes|debajo de las hojas, detrás de las piedras y entre la hierba>, pero no [o:lo|la] encontró.",
           ("Estaba tan triste que se le escapó una lágrima.", "Se sentó en el suelo, con ganas de llorar.", None))

    clue = _CULPRITS[culprit][0]
    avoid = {kind.species, "ardilla" if culprit == "viento" else culprit}
    first, second = rng.sample([w for w in _WITNESSES if w[1] not in avoid], 2)
    t.cast("w", first[0].gender, W1=noun_phrase(first[0], True), W1d=first[2])
    t.cast("v", second[0].gender, W2=noun_phrase(second[0], True), W2n=second[0].sg, W2d=second[2])
    t.para(("Primero fue a ver a {W1}, que estaba {W1d}.",
            "Lo primero que hizo fue ir a ver a {W1}, que estaba {W1d}."))
    t.para("—¿Has visto {Om}? —le preguntó {H}.")
    if rng.random() < 0.6:
        t.para(f"—No, no [o:lo|la] he visto —respondió {{W1}}—. Pero pregúntale a {{W2}}, {rng.choice(_REFERRALS)}.")
        t.para("{H} encontró a {W2} {W2d}.")
        t.para("—Buenos días, [v:señor|señora] {W2n}. ¿Has visto {Om}?")
        t.para(f"—¡Sí que [o:lo|la] he visto! —dijo {{W2}}—. Hace un rato vi {clue}.")
    else:
        t.para(f"—¡Sí que [o:lo|la] he visto! —dijo {{W1}}—. Hace un rato vi {clue}.")
    if rng.random() < 0.5:
        t.para("—¡Muchas gracias! —dijo {H}, y salió corriendo.")

    if culprit == "urraca":
        t.para("{H} llegó hasta el viejo pino y miró hacia arriba. En lo más alto había un nido lleno de cosas brillantes: botones, cucharillas, trozos de cristal... ¡y también {Op}!")
        t.para("—¡Eso es mío! —<gritó|exclamó> {H}.")
        t.para("La urraca bajó la cabeza, avergonzada.",
               "«Perdona», dijo. «Me gustan tanto las cosas que brillan que no lo puedo evitar».")
        t.para("{H} le prometió traerle cada semana una piedrecita brillante del río. La urraca, muy contenta, le devolvió {O}, y desde entonces fueron [h:buenos amigos|buenas amigas].")
    elif culprit == "ratones":
        t.para("{H} siguió el rastro hasta un agujero al pie de un roble. Se asomó con cuidado y vio a una familia de ratoncitos que dormían acurrucados sobre {Op}.",
               "Hacía frío, y los ratoncitos no tenían otra cosa con que abrigarse.",
               "{H} sintió tanta ternura que no quiso despertarlos y se fue sin hacer ruido.")
        t.para("Cuando se lo contó a {Gv}, [g:él|ella] le dio un beso y le dijo:")
        t.para("—Has hecho muy bien. Mañana haremos juntos una manta para los ratoncitos, y tú recuperarás {Ot}.")
    elif culprit == "cabra":
        t.para("Detrás del establo estaba la cabra, masticando tan tranquila. ¡Tenía {Op} entre los dientes!")
        t.para(("—¡Suelta eso, que es mío! —le pidió {H}.", "—¡Eh, que eso no se come! —exclamó {H}."))
        t.para("La cabra abrió mucho los ojos.",
               "«Es que tenía tanta hambre...», dijo. «¡Y parecía tan sabros[o:o|a]!».")
        t.para("{H} le ofreció una manzana a cambio, y la cabra se [o:lo|la] devolvió, un poco [o:mordisqueado|mordisqueada] pero [o:entero|entera]. "
               "Esa noche, {Gv} [o:lo|la] arregló con aguja e hilo, y quedó como [o:nuevo|nueva].")
    elif culprit == "cachorro":
        t.para("Junto al río encontró a un cachorro juguetón que daba saltos de alegría con {Op} en la boca.")
        t.para("—¡Eh, eso es mío! —le dijo {H}.")
        t.para("El cachorro se detuvo, movió la cola y dejó {O} en el suelo. Solo quería jugar, porque no tenía con quién.",
               "Así que {H} y el cachorro pasaron el resto de la tarde jugando juntos, y <desde entonces se veían cada día junto al río|al día siguiente volvieron a jugar>.")
    else:
        t.para("{H} corrió hacia el bosque y, por fin, [o:lo|la] vio: {O} se había quedado [o:enganchado|enganchada] en la rama más alta de un roble.",
               "Por más que lo intentó, {H} no podía llegar tan alto.",
               ("Entonces una ardilla que lo había visto todo trepó hasta la rama, [o:lo|la] soltó con cuidado y se [o:lo|la] devolvió.",
                "Entonces una golondrina que lo había visto todo voló hasta la rama, [o:lo|la] soltó con el pico y se [o:lo|la] devolvió."))
        t.para("—¡Muchas gracias! —dijo {H}, abrazando {Op}.")
    return culprit


def _plot_friend(t: _Tale, kind: _Kind) -> str:
    rng = t.rng
    options = [n for n in _NEWCOMERS if kind.group in n[3] and n[1] != kind.species]
    nouns, _, adj, _, why, rescue = rng.choice(options)
    noun = rng.choice(nouns)
    g = noun.gender
    group = "fantasy" if noun.sg in ("dragón", "gigante") else "animal"
    name = rng.choice([n for n in _NAMES[group, g] if n != t.slots["H"]])
    intros = [f"{noun_phrase(noun, False, adj)} llamad[n:o|a] {name}",
              f"{noun_phrase(noun, False, adj)} que se llamaba {name}"]
    if adj.m != "enorme":  # "muy enorme" is not Spanish
        intros.append(f"{noun_phrase(noun, False)} muy {adj.form(g)} que se llamaba {name}")
    t.cast("n", g, N=name, Ni=rng.choice(intros))
    t.cast("p", "m" if "m" in (t.genders["h"], g) else "f")  # the pair of friends
    t.para(("Un día llegó a {Pr} {Ni}.", "Una mañana apareció en {Pr} {Ni}."), why,
           "Por eso, {N} pasaba los días [n:solo|sola]<, mirando cómo jugaban los demás|, sentad[n:o|a] junto al camino|>.")
    t.para(("A {H} le daba pena [n:verlo|verla] siempre tan [n:solo|sola].",
            "Pero {H} pensaba que nadie merecía estar solo."),
           ("Así que se acercó a {N}.", "Así que un día fue a buscar a {N}."))
    t.para(("—Hola, me llamo {H} —le dijo con una sonrisa—. ¿Quieres jugar conmigo?",
            "—Hola, soy {H} —le dijo—. ¿Te apetece jugar conmigo?"))
    t.para(("—¿De verdad? —preguntó {N}, [n:sorprendido|sorprendida]—. ¡Claro que sí!",
            "—¿Conmigo? —dijo {N}, con los ojos brillantes—. ¡Me encantaría!"))
    t.para("Pasaron la tarde <jugando al escondite|haciendo carreras por el prado|contándose historias|buscando formas en las nubes>, y {H} descubrió que {N} era [n:muy divertido|muy divertida] <y tenía un corazón enorme|y sabía muchísimas canciones|y conocía los mejores escondites>.")
    t.para(*rescue)
    t.para(("Todos se quedaron con la boca abierta.", "Los demás no podían creer lo que veían."))
    t.para(("—Perdónanos, {N} —dijeron—. No te conocíamos y te juzgamos mal.",
            "—Gracias, {N} —dijeron todos—. Perdona por no haber querido jugar contigo."))
    t.para("{N} nunca más volvió a estar [n:solo|sola], y {H} y {N} fueron [p:los mejores amigos|las mejores amigas].")
    return "friend"


def _plot_village(t: _Tale, kind: _Kind) -> str:
    rng = t.rng
    problems = ["bees", "bridge"] + ["spring"] * (kind.species != "gigante") + [p for p, sp in (("giant", "gigante"), ("dragon", "dragón")) if sp != kind.species]
    if t.place_tag == "coast":
        problems.append("lighthouse")
    problem = rng.choice(problems)
    crew = rng.sample([c for c in _CREW[kind.group] if c[1] != kind.species], 3)
    t.fill(X=f"{crew[0][0]}, {crew[1][0]} y {crew[2][0]}", Xa=f"a {crew[0][0]}, a {crew[1][0]} y a {crew[2][0]}")
    if problem == "bridge":
        t.para("<Una noche de tormenta|Después de muchos días de lluvia>, el río creció tanto que se llevó el puente de {Pr}.",
               ("Ahora nadie podía ir al otro lado del río.", "Sin puente, nadie podía cruzar, y todos estaban muy tristes."))
        t.para("{H} <tuvo una idea|pensó un plan>. Reunió {Xa} y les explicó lo que había pensado.")
        t.para("Durante tres días trabajaron sin descanso: unos traían troncos, otros ataban cuerdas y otros clavaban tablas.",
               "<Al cuarto día|Por fin>, el puente nuevo estuvo terminado, más fuerte y más bonito que el anterior.")
        t.para("Todos lo cruzaron cantando, y desde entonces lo llaman el puente de {H}.")
        return "build"
    if problem == "spring":
        t.para("<Aquel verano|Una primavera muy calurosa|Un verano sin lluvia>, el arroyo que pasaba por {Pr} se quedó sin agua.",
               ("Las flores se marchitaban, la hierba se secaba y todos estaban muy preocupados.",
                "Los campos se secaban, y nadie sabía qué hacer."))
        t.para(("{H} decidió averiguar qué pasaba.", "{H} quiso saber por qué."),
               "Siguió el cauce del arroyo montaña arriba, <saltando de piedra en piedra|entre rocas y matorrales>, hasta llegar al manantial.",
               "Allí descubrió que una roca enorme había caído justo encima y no dejaba salir el agua.")
        t.para("{H} empujó con todas sus fuerzas, pero la roca no se movió ni un poquito.",
               "Entonces <bajó corriendo a buscar ayuda|fue a pedir ayuda> y volvió con {X}.")
        t.para(("—¡A la de tres! —gritó {H}—. ¡Una, dos y... tres!", "—¡Todos a la vez! —gritó {H}—. ¡Ahora!"))
        t.para("Empujaron todos juntos, y la roca rodó por la ladera hasta el fondo del barranco.",
               "El agua volvió a brotar, fresca y clara, y bajó <cantando|saltando entre las piedras> hasta {Pr}.",
               ("Esa noche hubo una gran fiesta, y todos le dieron las gracias a {H}.",
                "Aquella noche, en {Pr}, todos celebraron una gran fiesta."))
        return "together"
    if problem == "giant":
        t.para("<Aquel invierno|Un invierno>, un viento helado empezó a bajar de la montaña y no paraba ni de día ni de noche.",
               ("Nadie podía salir de casa, y hasta los pájaros temblaban en sus nidos.",
                "Los árboles se quedaron sin hojas y el río se congeló."))
        t.para("{H} se abrigó bien y subió a la montaña para ver de dónde venía aquel viento.",
               "En lo más alto encontró a un gigante sentado en una roca. Cada vez que suspiraba, una ráfaga helada bajaba hasta {Pr}.")
        if rng.random() < 0.5:
            t.para("—¿Por qué estás tan triste? —le preguntó {H}.")
            t.para("—Porque estoy solo —respondió el gigante—. Nadie sube nunca a visitarme.")
        else:
            t.para("—¿Qué te pasa, gigante? —le preguntó {H}.")
            t.para("—Me siento muy solo —dijo el gigante—. Nadie quiere ser mi amigo.")
        t.para("{H} se sentó a su lado y <le contó todos los chistes que sabía|le cantó sus canciones favoritas|le propuso adivinanzas muy difíciles>, hasta que el gigante soltó una carcajada <tan grande que resonó en las montañas|enorme>.")
        t.para("En ese mismo momento, el viento dejó de soplar y un sol tibio iluminó {Pr}.",
               "<Cada domingo|Todas las semanas>, {H} subía a visitar a su amigo, y el gigante nunca volvió a suspirar.")
        return "giant"
    if problem == "dragon":
        t.para("<Una noche|Una noche de otoño>, un rugido terrible despertó a todos en {Pr}.",
               "Venía de una cueva cercana, donde vivía un dragón, y nadie se atrevía a salir de casa.")
        t.para("Pero {H} pensó que quizá el dragón no estaba enfadado, sino que necesitaba ayuda.",
               "Así que, aunque tenía un poco de miedo, subió hasta la cueva.",
               "Allí estaba el dragón, con la cara hinchada y los ojos llenos de lágrimas.")
        t.para(("—Me duele muchísimo una muela —gimió el dragón—. No puedo comer ni dormir.",
                "—¡Ay, mi muela! —se quejó el dragón—. ¡Me duele tanto que no puedo dejar de rugir!"))
        t.para("{H} le pidió que abriera la boca bien grande y, con mucho cuidado, le sacó un hueso de cereza que se le había quedado clavado entre los dientes.")
        t.para("El dragón dejó de rugir y sonrió por primera vez en muchos días.",
               ("Como agradecimiento, cada invierno bajaba a {Pr} para encender las chimeneas de todas las casas.",
                "Y cada semana, {H} subía a la cueva a merendar con su nuevo amigo."))
        return "dragon"
    if problem == "lighthouse":
        t.para("Una noche de tormenta, la luz del faro se apagó, y los barcos de los pescadores no encontraban el camino de vuelta al puerto.")
        t.para("{H} corrió hasta el faro y subió los ciento veinte escalones de la escalera.",
               "Arriba descubrió que el viento había roto un cristal y había apagado la lámpara.")
        t.para("Sin perder un momento, tapó el agujero con su abrigo y volvió a encender la lámpara con mucho cuidado.")
        t.para("La luz brilló de nuevo sobre el mar y, uno a uno, los barcos llegaron sanos y salvos al puerto.",
               "<A la mañana siguiente|Al día siguiente>, hubo una gran fiesta en honor de {H}.")
        return "lighthouse"
    t.para("<Aquella primavera|Un año>, las abejas desaparecieron de {Pr}.",
           "Sin ellas, las flores no daban fruto, y los árboles se quedaron sin manzanas y sin cerezas.")
    t.para(("{H} salió a buscarlas.", "{H} decidió ir a buscarlas."),
           "Preguntó a las mariposas, a los pájaros y al viento, hasta que por fin encontró a la reina de las abejas en medio del bosque, atrapada en una telaraña.",
           "Con mucho cuidado, rompió los hilos uno a uno hasta liberarla.")
    t.para(("—Gracias —zumbó la reina—. Mis abejas no querían volver a casa sin mí.",
            "—¡Por fin libre! —zumbó la reina—. Gracias, mis abejas llevaban días buscándome."))
    t.para("Al día siguiente, miles de abejas volvieron a {Pr}, zumbando de flor en flor.",
           "Aquel otoño, los árboles dieron más fruta que nunca, y la reina de las abejas le regaló a {H} un tarro de su mejor miel.")
    return "bees"


# (plot, weight, chance that the opening mentions a hobby: long plots get fewer)
_PLOTS = ((_plot_cure, 0.22, 0.3), (_plot_wish, 0.2, 0.3), (_plot_lost, 0.22, 0.4),
          (_plot_friend, 0.18, 0.7), (_plot_village, 0.18, 0.8))


def _tale(rng: random.Random) -> str:
    t = _Tale(rng)
    plot, _, hobby_chance = rng.choices(_PLOTS, weights=[w for _, w, _ in _PLOTS])[0]
    kind = _hero(t, hobby_chance)
    moral_key = plot(t, kind)
    t.fill(M=rng.choice(_MORALS[moral_key]))
    t.para(("Y desde aquel día, {H} nunca olvidó que {M}.", "Y así fue como {H} aprendió que {M}.",
            "Desde entonces, en {Pr} todos saben que {M}.", "Aquel día, {H} descubrió que {M}."))
    if rng.random() < 0.5:
        t.para(("Colorín colorado, este cuento se ha acabado.", "Y colorín colorado, este cuento se ha acabado."))
    return t.text()


def generate_tales(seed: int = 0, max_bytes: int | None = DEFAULT_MAX_BYTES,
                   max_docs: int | None = None) -> Iterator[str]:
    """Yield tales (paragraphs joined by "\\n"), the same ones for the same seed.

    Stops once the tales yielded reach `max_bytes` UTF-8 bytes (the last one may go past it)
    or after `max_docs` tales; with both None it never stops.
    """
    for name, value in (("max_bytes", max_bytes), ("max_docs", max_docs)):
        if value is not None and value < 0:
            raise DataError(f"{name} must be >= 0, got {value}: pass a size or leave it unset")
    rng = random.Random(seed)
    total = docs = 0
    while (max_bytes is None or total < max_bytes) and (max_docs is None or docs < max_docs):
        tale = _tale(rng)
        while not MIN_CHARS <= len(tale) <= MAX_CHARS:
            tale = _tale(rng)
        total += len(tale.encode("utf-8"))
        docs += 1
        yield tale
