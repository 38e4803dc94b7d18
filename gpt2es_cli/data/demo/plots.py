"""The plots of the tales and their registry: an opening, one plot drawn by weight, and a moral.

`tell(rng, plot)` casts a hero and writes the opening paragraph, then lets the plot write the middle
and ends on the plot's moral. Every plot is an entry of PLOTS; the village plot is a group that
draws one of VILLAGE_PROBLEMS, and the lost treasure ends the way its culprit decides
(LOST_ENDINGS). Plots write in the pattern language of patterns.py and may use the slots the
opening fills: hero, hero_noun, hero_article, hero_intro, trait, trait_habit, home and community.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from gpt2es_cli.data.demo.grammar import noun_phrase
from gpt2es_cli.data.demo.journey import journey
from gpt2es_cli.data.demo.lexicon import (
    CREW,
    CULPRITS,
    FAMILY,
    GIVERS,
    HEALERS,
    HEROES,
    HOBBIES,
    MORALS,
    NAMES,
    NEWCOMERS,
    PERSON_HOBBIES,
    PLACES,
    REFERRALS,
    REMEDIES,
    REMEDY_ADJECTIVES,
    REMEDY_PLACES,
    TRAITS,
    TREASURES,
    WISHES,
    WITNESSES,
    Kind,
)
from gpt2es_cli.data.demo.patterns import Tale


@dataclass(frozen=True)
class Plot:
    """A story the middle of a tale can follow."""

    name: str
    write: Callable[[Tale, Kind], str]
    """Writes the plot's paragraphs after the opening and returns the key of its moral in MORALS."""
    weight: float
    """How often the plot is drawn, relative to the others."""
    hobby_chance: float
    """Chance that the opening mentions the hero's hobby (long plots get fewer)."""


@dataclass(frozen=True)
class VillageProblem:
    """A trouble that falls on the hero's home and how the hero mends it: one sub-plot of the village plot."""

    name: str
    write: Callable[[Tale], str]
    """Writes the sub-plot (the slots crew and crew_with_a are filled) and returns the key of its moral."""
    not_for: str = ""
    """A hero of this species never meets this problem."""
    only_at: str = ""
    """The place tag (a key of PLACES) of the only homes where it happens; "" for any home."""

    def fits(self, kind: Kind, place_tag: str) -> bool:
        return kind.species != self.not_for and self.only_at in ("", place_tag)


def _introduce_hero(t: Tale, hobby_chance: float) -> Kind:
    """Cast the hero, fill the opening's slots and write the opening paragraph."""
    rng = t.rng
    kind = rng.choice(HEROES)
    noun, g = kind.noun, kind.noun.gender
    trait = rng.choice(list(TRAITS))
    t.place_tag = rng.choice(kind.places)
    place, community = rng.choice(PLACES[t.place_tag])
    t.cast("hero", g, hero=rng.choice(NAMES[kind.group, g]), hero_noun=noun.sg, hero_article=noun.article(False),
           trait=trait.form(g), trait_habit=rng.choice(TRAITS[trait]), home=place, community=community)

    called = rng.choice(("llamad[hero:o|a] {hero}", "que se llamaba {hero}"))
    intros = [(f"{noun_phrase(noun, False, trait)} {called}", True),
              (f"{noun_phrase(noun, False)} muy {{trait}} {called}", True)]
    if kind.pre:
        intros.append((f"{noun_phrase(noun, False, rng.choice(kind.pre), before=True)} {called}", False))
    intro, told_trait = rng.choice(intros)
    t.fill(hero_intro=intro)
    openings = ["Había una vez, {home}, {hero_intro}."]
    if called.startswith("llamad"):  # "que se llamaba Lucía que vivía..." would stumble
        openings += ["Había una vez {hero_intro} que vivía {home}."] * 2
    if rng.random() < 0.72:
        opening = rng.choice(openings)
    else:
        opening = rng.choice(("Hace mucho tiempo, {home}, vivía {hero_intro}.",
                              "Hace muchos años, {home}, vivía {hero_intro}.", "{home:cap} vivía una vez {hero_intro}."))
    describe = ["{hero} {trait_habit}.", "Todos en {community} sabían que {hero} {trait_habit}."]
    if not told_trait:
        describe += ["{hero} era {hero_article} {hero_noun} muy {trait}: {trait_habit}."] * 2
    hobbies = HOBBIES + (PERSON_HOBBIES if kind.group == "person" else ())
    hobby = rng.choice(("Le encantaba {}.", "Lo que más le gustaba en el mundo era {}.",
                        "Su pasatiempo favorito era {}.")).format(rng.choice(hobbies))
    t.para(opening, describe, hobby if rng.random() < hobby_chance else None)
    return kind


def _plot_cure(t: Tale, kind: Kind) -> str:
    """Someone close falls ill, and the hero travels to fetch the one plant that cures them."""
    rng = t.rng
    family, fg = rng.choice(FAMILY)
    remedy = rng.choice(REMEDIES)
    radj = rng.choice(REMEDY_ADJECTIVES)
    grows, reached = rng.choice(REMEDY_PLACES)
    healer = rng.choice(HEALERS[kind.group])
    t.cast("loved_one", fg, loved_one=family)
    t.cast("remedy", remedy.gender, remedy=noun_phrase(remedy, True, radj),
           remedy_intro=noun_phrase(remedy, False, radj), where_it_grows=grows, destination=reached)
    t.fill(healer=healer)
    t.para("<Un día|Una mañana de invierno|Un otoño|Cierto día>, {loved_one} se puso muy [loved_one:enfermo|enferma].",
           ("Tenía fiebre y no podía levantarse de la cama.", "Tosía sin parar y estaba muy [loved_one:pálido|pálida].",
            None, None),
           ("{healer:cap} dijo que solo {remedy_intro} podría [loved_one:curarlo|curarla], y que crecía {where_it_grows}.",
            "Según {healer}, solo {remedy_intro}, que crecía {where_it_grows}, podría [loved_one:curarlo|curarla]."))
    if rng.random() < 0.5:
        t.para("<{hero} no lo dudó ni un momento|{hero} se armó de valor>: "
               "<metió en una bolsa un poco de pan|preparó algo de comida> y, al amanecer, se puso en camino.")
    else:
        t.para("—Yo iré a [remedy:buscarlo|buscarla] —dijo {hero}—. Volveré pronto, te lo prometo.")
    journey(t, {kind.species})
    t.para("<Por fin|Al fin|Después de tanto caminar>, {hero} llegó a {destination}<, y allí, entre las rocas,| y allí> encontró {remedy}.",
           "[remedy:Lo|La] recogió con mucho cuidado y volvió a casa tan deprisa como pudo.")
    t.para("Preparó una infusión con {remedy} y se la dio a beber a {loved_one}.",
           "<Al día siguiente|A la mañana siguiente>, {loved_one} se levantó de la cama, [loved_one:curado|curada] y con ganas de <cantar|dar un paseo|reír>.")
    if rng.random() < 0.5:
        t.para("—Gracias, {hero} —le dijo {loved_one}, con los ojos llenos de alegría—. Sin ti no me habría curado.")
    return "kind"


def _plot_wish(t: Tale, kind: Kind) -> str:
    """The hero travels far to fulfil a dream."""
    rng = t.rng
    wishes = [w for w in WISHES if not (w[0] == "ver el mar" and t.place_tag == "coast")]
    dream, reached, far, seen = rng.choice(wishes)
    family, fg = rng.choice(FAMILY[:4])
    t.cast("loved_one", fg, loved_one=family)
    t.fill(dream=dream, destination=reached)
    t.para(("{hero} tenía un sueño: quería {dream}.", "Desde [hero:pequeño|pequeña], {hero} soñaba con {dream}.",
            "Más que nada en el mundo, {hero} deseaba {dream}."),
           far)
    t.para("<Un día|Una mañana de primavera>, {hero} decidió que ya era hora de cumplir su sueño.",
           "Se despidió de {loved_one}, que le dio <un abrazo y una bolsa con comida|un beso y una bufanda calentita>, y se puso en camino.")
    journey(t, {kind.species})
    t.para("<Por fin|Al fin|Después de tanto caminar>, {hero} llegó a {destination}.", *seen)
    if rng.random() < 0.6:
        t.para("Unos días después volvió a {community}.",
               ("{loved_one:cap} [hero:lo|la] estaba esperando, y {hero} le contó su aventura de principio a fin.",
                "Esa noche, junto al fuego, le contó a {loved_one} todo lo que había visto."))
    return rng.choice(("kind", "wish"))


def _plot_lost(t: Tale, kind: Kind) -> str:
    """The hero loses a present, asks the neighbours, and finds who took it."""
    rng = t.rng

    def takers(tags: frozenset[str]) -> list[str]:  # who could have taken it (never the hero's kin)
        return [c for c, (_, tag, sp) in CULPRITS.items() if tag in tags and sp != kind.species]

    noun, descs, tags = rng.choice([obj for obj in TREASURES if takers(obj[2])])
    desc = rng.choice(descs)
    d = desc if isinstance(desc, str) else desc.form(noun.gender)
    giver, gg = rng.choice(GIVERS)
    culprit = rng.choice(takers(tags))
    t.cast("treasure", noun.gender, treasure=f"{noun_phrase(noun, True)} {d}",
           treasure_intro=f"{noun_phrase(noun, False)} {d}", their_treasure=f"su {noun.sg} {d}",
           my_treasure=f"mi {noun.sg} {d}", your_treasure=f"tu {noun.sg} {d}")
    t.cast("giver", gg, giver=giver)
    t.para("{hero} tenía {treasure_intro} que le había regalado {giver}<, y [treasure:lo|la] llevaba a todas partes| y que cuidaba como un tesoro>.")
    t.para("Pero <una tarde|un día>, después de <jugar en el prado|pasear junto al río|dar un paseo por el bosque>, {hero} se dio cuenta de que ya no tenía {their_treasure}.",
           "[treasure:Lo|La] buscó <por todas partes|debajo de las hojas, detrás de las piedras y entre la hierba>, pero no [treasure:lo|la] encontró.",
           ("Estaba tan triste que se le escapó una lágrima.", "Se sentó en el suelo, con ganas de llorar.", None))

    clue = CULPRITS[culprit][0]
    avoid = {kind.species, "ardilla" if culprit == "viento" else culprit}
    first, second = rng.sample([w for w in WITNESSES if w[1] not in avoid], 2)
    t.cast("first_witness", first[0].gender, first_witness=noun_phrase(first[0], True), first_witness_doing=first[2])
    t.cast("second_witness", second[0].gender, second_witness=noun_phrase(second[0], True),
           second_witness_noun=second[0].sg, second_witness_doing=second[2])
    t.para(("Primero fue a ver a {first_witness}, que estaba {first_witness_doing}.",
            "Lo primero que hizo fue ir a ver a {first_witness}, que estaba {first_witness_doing}."))
    t.para("—¿Has visto {my_treasure}? —le preguntó {hero}.")
    if rng.random() < 0.6:
        t.para(f"—No, no [treasure:lo|la] he visto —respondió {{first_witness}}—. Pero pregúntale a {{second_witness}}, {rng.choice(REFERRALS)}.")
        t.para("{hero} encontró a {second_witness} {second_witness_doing}.")
        t.para("—Buenos días, [second_witness:señor|señora] {second_witness_noun}. ¿Has visto {my_treasure}?")
        t.para(f"—¡Sí que [treasure:lo|la] he visto! —dijo {{second_witness}}—. Hace un rato vi {clue}.")
    else:
        t.para(f"—¡Sí que [treasure:lo|la] he visto! —dijo {{first_witness}}—. Hace un rato vi {clue}.")
    if rng.random() < 0.5:
        t.para("—¡Muchas gracias! —dijo {hero}, y salió corriendo.")
    LOST_ENDINGS[culprit](t)
    return culprit


def _magpie_ending(t: Tale) -> None:
    """A magpie took it to its nest of shiny things, and gives it back for a pebble a week."""
    t.para("{hero} llegó hasta el viejo pino y miró hacia arriba. En lo más alto había un nido lleno de cosas brillantes: botones, cucharillas, trozos de cristal... ¡y también {their_treasure}!")
    t.para("—¡Eso es mío! —<gritó|exclamó> {hero}.")
    t.para("La urraca bajó la cabeza, avergonzada.",
           "«Perdona», dijo. «Me gustan tanto las cosas que brillan que no lo puedo evitar».")
    t.para("{hero} le prometió traerle cada semana una piedrecita brillante del río. La urraca, muy contenta, le devolvió {treasure}, y desde entonces fueron [hero:buenos amigos|buenas amigas].")


def _mice_ending(t: Tale) -> None:
    """Mice sleep on it to keep warm, and the hero lets them."""
    t.para("{hero} siguió el rastro hasta un agujero al pie de un roble. Se asomó con cuidado y vio a una familia de ratoncitos que dormían acurrucados sobre {their_treasure}.",
           "Hacía frío, y los ratoncitos no tenían otra cosa con que abrigarse.",
           "{hero} sintió tanta ternura que no quiso despertarlos y se fue sin hacer ruido.")
    t.para("Cuando se lo contó a {giver}, [giver:él|ella] le dio un beso y le dijo:")
    t.para("—Has hecho muy bien. Mañana haremos juntos una manta para los ratoncitos, y tú recuperarás {your_treasure}.")


def _goat_ending(t: Tale) -> None:
    """A hungry goat is chewing it, and swaps it for an apple."""
    t.para("Detrás del establo estaba la cabra, masticando tan tranquila. ¡Tenía {their_treasure} entre los dientes!")
    t.para(("—¡Suelta eso, que es mío! —le pidió {hero}.", "—¡Eh, que eso no se come! —exclamó {hero}."))
    t.para("La cabra abrió mucho los ojos.",
           "«Es que tenía tanta hambre...», dijo. «¡Y parecía tan sabros[treasure:o|a]!».")
    t.para("{hero} le ofreció una manzana a cambio, y la cabra se [treasure:lo|la] devolvió, un poco [treasure:mordisqueado|mordisqueada] pero [treasure:entero|entera]. "
           "Esa noche, {giver} [treasure:lo|la] arregló con aguja e hilo, y quedó como [treasure:nuevo|nueva].")


def _puppy_ending(t: Tale) -> None:
    """A lonely puppy plays with it, and the hero becomes its playmate."""
    t.para("Junto al río encontró a un cachorro juguetón que daba saltos de alegría con {their_treasure} en la boca.")
    t.para("—¡Eh, eso es mío! —le dijo {hero}.")
    t.para("El cachorro se detuvo, movió la cola y dejó {treasure} en el suelo. Solo quería jugar, porque no tenía con quién.",
           "Así que {hero} y el cachorro pasaron el resto de la tarde jugando juntos, y <desde entonces se veían cada día junto al río|al día siguiente volvieron a jugar>.")


def _wind_ending(t: Tale) -> None:
    """The wind left it in a tree, and an animal brings it down."""
    t.para("{hero} corrió hacia el bosque y, por fin, [treasure:lo|la] vio: {treasure} se había quedado [treasure:enganchado|enganchada] en la rama más alta de un roble.",
           "Por más que lo intentó, {hero} no podía llegar tan alto.",
           ("Entonces una ardilla que lo había visto todo trepó hasta la rama, [treasure:lo|la] soltó con cuidado y se [treasure:lo|la] devolvió.",
            "Entonces una golondrina que lo había visto todo voló hasta la rama, [treasure:lo|la] soltó con el pico y se [treasure:lo|la] devolvió."))
    t.para("—¡Muchas gracias! —dijo {hero}, abrazando {their_treasure}.")


LOST_ENDINGS: dict[str, Callable[[Tale], None]] = {
    "urraca": _magpie_ending,
    "ratones": _mice_ending,
    "cabra": _goat_ending,
    "cachorro": _puppy_ending,
    "viento": _wind_ending,
}
"""How the lost treasure ends, by the culprit (a key of CULPRITS) who took it."""


def _plot_friend(t: Tale, kind: Kind) -> str:
    """A newcomer nobody plays with becomes the hero's friend, and one day saves everyone."""
    rng = t.rng
    options = [n for n in NEWCOMERS if kind.group in n[3] and n[1] != kind.species]
    nouns, _, adj, _, why, rescue = rng.choice(options)
    noun = rng.choice(nouns)
    g = noun.gender
    group = "fantasy" if noun.sg in ("dragón", "gigante") else "animal"
    name = rng.choice([n for n in NAMES[group, g] if n != t.slots["hero"]])
    intros = [f"{noun_phrase(noun, False, adj)} llamad[newcomer:o|a] {name}",
              f"{noun_phrase(noun, False, adj)} que se llamaba {name}"]
    if adj.m != "enorme":  # "muy enorme" is not Spanish
        intros.append(f"{noun_phrase(noun, False)} muy {adj.form(g)} que se llamaba {name}")
    t.cast("newcomer", g, newcomer=name, newcomer_intro=rng.choice(intros))
    t.cast("friends", "m" if "m" in (t.genders["hero"], g) else "f")  # the pair of friends
    t.para(("Un día llegó a {community} {newcomer_intro}.", "Una mañana apareció en {community} {newcomer_intro}."), why,
           "Por eso, {newcomer} pasaba los días [newcomer:solo|sola]<, mirando cómo jugaban los demás|, sentad[newcomer:o|a] junto al camino|>.")
    t.para(("A {hero} le daba pena [newcomer:verlo|verla] siempre tan [newcomer:solo|sola].",
            "Pero {hero} pensaba que nadie merecía estar solo."),
           ("Así que se acercó a {newcomer}.", "Así que un día fue a buscar a {newcomer}."))
    t.para(("—Hola, me llamo {hero} —le dijo con una sonrisa—. ¿Quieres jugar conmigo?",
            "—Hola, soy {hero} —le dijo—. ¿Te apetece jugar conmigo?"))
    t.para(("—¿De verdad? —preguntó {newcomer}, [newcomer:sorprendido|sorprendida]—. ¡Claro que sí!",
            "—¿Conmigo? —dijo {newcomer}, con los ojos brillantes—. ¡Me encantaría!"))
    t.para("Pasaron la tarde <jugando al escondite|haciendo carreras por el prado|contándose historias|buscando formas en las nubes>, y {hero} descubrió que {newcomer} era [newcomer:muy divertido|muy divertida] <y tenía un corazón enorme|y sabía muchísimas canciones|y conocía los mejores escondites>.")
    t.para(*rescue)
    t.para(("Todos se quedaron con la boca abierta.", "Los demás no podían creer lo que veían."))
    t.para(("—Perdónanos, {newcomer} —dijeron—. No te conocíamos y te juzgamos mal.",
            "—Gracias, {newcomer} —dijeron todos—. Perdona por no haber querido jugar contigo."))
    t.para("{newcomer} nunca más volvió a estar [newcomer:solo|sola], y {hero} y {newcomer} fueron [friends:los mejores amigos|las mejores amigas].")
    return "friend"


def _plot_village(t: Tale, kind: Kind) -> str:
    """A trouble falls on the hero's home (one of VILLAGE_PROBLEMS), and the hero mends it."""
    rng = t.rng
    problem = rng.choice([problem for problem in VILLAGE_PROBLEMS if problem.fits(kind, t.place_tag)])
    crew = rng.sample([c for c in CREW[kind.group] if c[1] != kind.species], 3)
    t.fill(crew=f"{crew[0][0]}, {crew[1][0]} y {crew[2][0]}",
           crew_with_a=f"a {crew[0][0]}, a {crew[1][0]} y a {crew[2][0]}")  # "Reunió a ...": the personal a
    return problem.write(t)


def _village_bees(t: Tale) -> str:
    """The bees are gone, and the hero frees their queen from a spider's web."""
    t.para("<Aquella primavera|Un año>, las abejas desaparecieron de {community}.",
       "Sin ellas, las flores no daban fruto, y los árboles se quedaron sin manzanas y sin cerezas.")
    t.para(("{hero} salió a buscarlas.", "{hero} decidió ir a buscarlas."),
       "Preguntó a las mariposas, a los pájaros y al viento, hasta que por fin encontró a la reina de las abejas en medio del bosque, atrapada en una telaraña.",
       "Con mucho cuidado, rompió los hilos uno a uno hasta liberarla.")
    t.para(("—Gracias —zumbó la reina—. Mis abejas no querían volver a casa sin mí.",
        "—¡Por fin libre! —zumbó la reina—. Gracias, mis abejas llevaban días buscándome."))
    t.para("Al día siguiente, miles de abejas volvieron a {community}, zumbando de flor en flor.",
       "Aquel otoño, los árboles dieron más fruta que nunca, y la reina de las abejas le regaló a {hero} un tarro de su mejor miel.")
    return "bees"


def _village_bridge(t: Tale) -> str:
    """The river carries the bridge away, and the hero and the crew build a new one."""
    t.para("<Una noche de tormenta|Después de muchos días de lluvia>, el río creció tanto que se llevó el puente de {community}.",
           ("Ahora nadie podía ir al otro lado del río.", "Sin puente, nadie podía cruzar, y todos estaban muy tristes."))
    t.para("{hero} <tuvo una idea|pensó un plan>. Reunió {crew_with_a} y les explicó lo que había pensado.")
    t.para("Durante tres días trabajaron sin descanso: unos traían troncos, otros ataban cuerdas y otros clavaban tablas.",
           "<Al cuarto día|Por fin>, el puente nuevo estuvo terminado, más fuerte y más bonito que el anterior.")
    t.para("Todos lo cruzaron cantando, y desde entonces lo llaman el puente de {hero}.")
    return "build"


def _village_spring(t: Tale) -> str:
    """A rock blocks the spring, and the hero and the crew push it away."""
    t.para("<Aquel verano|Una primavera muy calurosa|Un verano sin lluvia>, el arroyo que pasaba por {community} se quedó sin agua.",
           ("Las flores se marchitaban, la hierba se secaba y todos estaban muy preocupados.",
            "Los campos se secaban, y nadie sabía qué hacer."))
    t.para(("{hero} decidió averiguar qué pasaba.", "{hero} quiso saber por qué."),
           "Siguió el cauce del arroyo montaña arriba, <saltando de piedra en piedra|entre rocas y matorrales>, hasta llegar al manantial.",
           "Allí descubrió que una roca enorme había caído justo encima y no dejaba salir el agua.")
    t.para("{hero} empujó con todas sus fuerzas, pero la roca no se movió ni un poquito.",
           "Entonces <bajó corriendo a buscar ayuda|fue a pedir ayuda> y volvió con {crew}.")
    t.para(("—¡A la de tres! —gritó {hero}—. ¡Una, dos y... tres!", "—¡Todos a la vez! —gritó {hero}—. ¡Ahora!"))
    t.para("Empujaron todos juntos, y la roca rodó por la ladera hasta el fondo del barranco.",
           "El agua volvió a brotar, fresca y clara, y bajó <cantando|saltando entre las piedras> hasta {community}.",
           ("Esa noche hubo una gran fiesta, y todos le dieron las gracias a {hero}.",
            "Aquella noche, en {community}, todos celebraron una gran fiesta."))
    return "together"


def _village_giant(t: Tale) -> str:
    """A lonely giant's sighs freeze the village, until the hero makes him laugh."""
    rng = t.rng
    t.para("<Aquel invierno|Un invierno>, un viento helado empezó a bajar de la montaña y no paraba ni de día ni de noche.",
           ("Nadie podía salir de casa, y hasta los pájaros temblaban en sus nidos.",
            "Los árboles se quedaron sin hojas y el río se congeló."))
    t.para("{hero} se abrigó bien y subió a la montaña para ver de dónde venía aquel viento.",
           "En lo más alto encontró a un gigante sentado en una roca. Cada vez que suspiraba, una ráfaga helada bajaba hasta {community}.")
    if rng.random() < 0.5:
        t.para("—¿Por qué estás tan triste? —le preguntó {hero}.")
        t.para("—Porque estoy solo —respondió el gigante—. Nadie sube nunca a visitarme.")
    else:
        t.para("—¿Qué te pasa, gigante? —le preguntó {hero}.")
        t.para("—Me siento muy solo —dijo el gigante—. Nadie quiere ser mi amigo.")
    t.para("{hero} se sentó a su lado y <le contó todos los chistes que sabía|le cantó sus canciones favoritas|le propuso adivinanzas muy difíciles>, hasta que el gigante soltó una carcajada <tan grande que resonó en las montañas|enorme>.")
    t.para("En ese mismo momento, el viento dejó de soplar y un sol tibio iluminó {community}.",
           "<Cada domingo|Todas las semanas>, {hero} subía a visitar a su amigo, y el gigante nunca volvió a suspirar.")
    return "giant"


def _village_dragon(t: Tale) -> str:
    """A dragon roars with toothache, and the hero pulls out what hurts."""
    t.para("<Una noche|Una noche de otoño>, un rugido terrible despertó a todos en {community}.",
           "Venía de una cueva cercana, donde vivía un dragón, y nadie se atrevía a salir de casa.")
    t.para("Pero {hero} pensó que quizá el dragón no estaba enfadado, sino que necesitaba ayuda.",
           "Así que, aunque tenía un poco de miedo, subió hasta la cueva.",
           "Allí estaba el dragón, con la cara hinchada y los ojos llenos de lágrimas.")
    t.para(("—Me duele muchísimo una muela —gimió el dragón—. No puedo comer ni dormir.",
            "—¡Ay, mi muela! —se quejó el dragón—. ¡Me duele tanto que no puedo dejar de rugir!"))
    t.para("{hero} le pidió que abriera la boca bien grande y, con mucho cuidado, le sacó un hueso de cereza que se le había quedado clavado entre los dientes.")
    t.para("El dragón dejó de rugir y sonrió por primera vez en muchos días.",
           ("Como agradecimiento, cada invierno bajaba a {community} para encender las chimeneas de todas las casas.",
            "Y cada semana, {hero} subía a la cueva a merendar con su nuevo amigo."))
    return "dragon"


def _village_lighthouse(t: Tale) -> str:
    """The lighthouse goes out in a storm, and the hero lights it again."""
    t.para("Una noche de tormenta, la luz del faro se apagó, y los barcos de los pescadores no encontraban el camino de vuelta al puerto.")
    t.para("{hero} corrió hasta el faro y subió los ciento veinte escalones de la escalera.",
           "Arriba descubrió que el viento había roto un cristal y había apagado la lámpara.")
    t.para("Sin perder un momento, tapó el agujero con su abrigo y volvió a encender la lámpara con mucho cuidado.")
    t.para("La luz brilló de nuevo sobre el mar y, uno a uno, los barcos llegaron sanos y salvos al puerto.",
           "<A la mañana siguiente|Al día siguiente>, hubo una gran fiesta en honor de {hero}.")
    return "lighthouse"


VILLAGE_PROBLEMS = (
    VillageProblem("bees", _village_bees),
    VillageProblem("bridge", _village_bridge),
    VillageProblem("spring", _village_spring, not_for="gigante"),  # a giant would move the rock alone
    VillageProblem("giant", _village_giant, not_for="gigante"),
    VillageProblem("dragon", _village_dragon, not_for="dragón"),
    VillageProblem("lighthouse", _village_lighthouse, only_at="coast"),
)
"""The village plot's sub-plots; it draws one with equal chances among those that fit the hero."""

PLOTS = (
    Plot("cure", _plot_cure, weight=0.22, hobby_chance=0.3),
    Plot("wish", _plot_wish, weight=0.2, hobby_chance=0.3),
    Plot("lost", _plot_lost, weight=0.22, hobby_chance=0.4),
    Plot("friend", _plot_friend, weight=0.18, hobby_chance=0.7),
    Plot("village", _plot_village, weight=0.18, hobby_chance=0.8),
)
"""Every plot a tale can follow."""


def tell_story(rng: random.Random, plot: Plot) -> Tale:
    """One tale following `plot`: the opening, the plot, its moral and, half the time, "colorín colorado".

    The Tale keeps what was told (its slots, the plot's name and how it ended) beside its text."""
    t = Tale(rng)
    kind = _introduce_hero(t, plot.hobby_chance)
    moral_key = plot.write(t, kind)
    t.plot, t.ending = plot.name, moral_key
    t.fill(moral=rng.choice(MORALS[moral_key]))
    t.para(("Y desde aquel día, {hero} nunca olvidó que {moral}.", "Y así fue como {hero} aprendió que {moral}.",
            "Desde entonces, en {community} todos saben que {moral}.", "Aquel día, {hero} descubrió que {moral}."))
    if rng.random() < 0.5:
        t.para(("Colorín colorado, este cuento se ha acabado.", "Y colorín colorado, este cuento se ha acabado."))
    return t


def tell(rng: random.Random, plot: Plot) -> str:
    """The text of one tale following `plot` (see tell_story)."""
    return tell_story(rng, plot).text()


def draw_story(rng: random.Random) -> Tale:
    """One tale of any length, its plot drawn from PLOTS by weight."""
    plot = rng.choices(PLOTS, weights=[plot.weight for plot in PLOTS])[0]
    return tell_story(rng, plot)
