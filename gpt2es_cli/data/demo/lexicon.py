"""The word tables of the tales: nouns, adjectives, characters, names, homes and each plot's material.

Every word here is original text written for gpt2es; nothing is copied from any book. Patterns
inside the tables use the language of patterns.py: `[role:masc|fem]`, `<a|b>` and `{slot}`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpt2es_cli.data.demo.grammar import (
    Adj,
    Noun,
    register_adjective,
    register_adjectives,
    register_noun,
    register_nouns,
)

# --- Words ------------------------------------------------------------------------------------

# Nouns that only appear inside patterns, registered for the agreement tests.
register_nouns("""
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

# Colour adjectives by masculine singular (treasures are described with them).
COLOURS = {colour: register_adjective(colour) for colour in ("rojo", "azul", "amarillo", "verde", "blanco", "morado")}
register_adjectives("""
    pequeño viejo grande enorme alto largo dorado plateado brillante oscuro espeso frondoso silencioso encantado
    florido helado cristalino tranquilo estrecho colgante empinado suave nevado pedregoso seco escondido profundo
    ancho fresco claro calentito contento triste juguetón caliente nuevo sabio dulce fuerte hinchado
""")
register_adjective("mejor", "mejor")
register_adjective("joven", "joven", "jóvenes", "jóvenes")

# --- Characters and homes ---------------------------------------------------------------------

# Personality traits: the adjective, and things a character with that trait did (imperfect).
TRAITS: dict[Adj, tuple[str, ...]] = {
    register_adjective(t): clauses
    for t, clauses in {
        "valiente": ("no le tenía miedo a nada, ni siquiera a las tormentas",
                     "siempre era [hero:el primero|la primera] en ofrecerse cuando había algo difícil que hacer"),
        "curioso": ("siempre quería saber el porqué de todas las cosas",
                    "lo miraba todo con los ojos muy abiertos"),
        "alegre": ("siempre iba cantando por el camino", "se reía por cualquier cosa"),
        "tímido": ("se ponía [hero:colorado|colorada] cada vez que alguien le hablaba",
                   "casi nunca se atrevía a hablar con desconocidos"),
        "generoso": ("siempre compartía lo poco que tenía",
                     "nunca se guardaba nada para [hero:sí mismo|sí misma]"),
        "travieso": ("siempre andaba [hero:metido|metida] en algún lío", "no paraba de inventar bromas"),
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
        "inquieto": ("no podía estarse [hero:quieto|quieta] ni un momento",),
        "tranquilo": ("nunca tenía prisa para nada",),
        "cariñoso": ("daba los mejores abrazos del mundo",),
        "bondadoso": ("siempre ayudaba a quien lo necesitaba",),
    }.items()
}

# What a hero loves doing; people also have PERSON_HOBBIES.
HOBBIES = (
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
PERSON_HOBBIES = ("leer libros de aventuras", "pintar dibujos de animales", "tocar la flauta",
                  "hacer barquitos de papel", "dibujar mapas de lugares imaginarios",
                  "hacer cometas de papel", "cuidar las flores de su ventana")

# Where a hero lives: (prepositional phrase, the community it names later).
PLACES: dict[str, tuple[tuple[str, str], ...]] = {
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
class Kind:
    """What a character is: noun, species (conejo and coneja are one), group, intro adjectives, homes."""

    noun: Noun
    species: str
    group: str
    pre: tuple[Adj, ...]
    places: tuple[str, ...]


def _kinds(group: str, table: str) -> list[Kind]:
    """Rows "noun g species pre1/pre2 place1/place2" (pre "-" for none; g* = tonic a)."""
    kinds = []
    for row in table.strip().splitlines():
        sg, g, species, pre, places = row.split()
        noun = register_noun(sg, g.rstrip("*"), tonic_a=g.endswith("*"))
        adjs = () if pre == "-" else tuple(register_adjective(a) for a in pre.split("/"))
        kinds.append(Kind(noun, species, group, adjs, tuple(places.split("/"))))
    return kinds


# Every kind of hero, by group.
HEROES = _kinds("person", """
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

# First names by (group, gender).
NAMES: dict[tuple[str, str], tuple[str, ...]] = {
    key: tuple(names.split())
    for key, names in {
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
    }.items()
}

# Someone close to the hero: (noun phrase, gender). The first four can also give a present.
FAMILY = (("su abuela", "f"), ("su abuelo", "m"), ("su madre", "f"), ("su padre", "m"),
          ("su hermanito", "m"), ("su hermana pequeña", "f"), ("su mejor amigo", "m"),
          ("su mejor amiga", "f"))
GIVERS = (*FAMILY[:4], ("su madrina", "f"), ("su padrino", "m"))

# --- Plot material ----------------------------------------------------------------------------

# The cure: a plant, a colour or shine, and where it grows (phrase, place reached).
REMEDIES = [register_noun(n, g) for n, g in (("flor", "f"), ("hierba", "f"), ("raíz", "f"), ("hoja", "f"),
                                             ("trébol", "m"), ("lirio", "m"), ("musgo", "m"), ("helecho", "m"))]
REMEDY_ADJECTIVES = [register_adjective(a) for a in ("dorado", "plateado", "azul", "morado", "blanco", "brillante")]
REMEDY_PLACES = (("en la cima de la montaña más alta", "la cima de la montaña más alta"),
                 ("en el fondo de un valle escondido", "el fondo del valle escondido"),
                 ("junto al manantial de la luna", "el manantial de la luna"),
                 ("al otro lado del bosque encantado", "el otro lado del bosque encantado"),
                 ("a la orilla de la laguna de plata", "la orilla de la laguna de plata"),
                 ("detrás de la gran cascada", "la gran cascada"),
                 ("en el jardín de un viejo gigante", "el jardín del viejo gigante"))
HEALERS = {
    "person": ("la vieja curandera de {community}", "el médico de {community}", "una anciana muy sabia"),
    "animal": ("la vieja lechuza del bosque", "el viejo ciervo del bosque"),
    "fantasy": ("la vieja curandera de {community}", "el hada más anciana del bosque"),
}

# The dream: (what, where it is, how far, what the hero saw there).
WISHES = (
    ("ver el mar", "la costa", "Pero la costa estaba muy lejos, más allá de los bosques y las colinas.",
     ("Al bajar la última colina, apareció ante sus ojos el mar, azul y inmenso, con olas que brillaban bajo el sol.",
      "{hero} se acercó a la orilla y dejó que las olas le hicieran cosquillas. ¡Era aún más bonito de lo que había soñado!")),
    ("tocar la nieve", "las montañas del norte", "Pero las montañas del norte estaban muy lejos, y nadie de {community} había ido nunca hasta allí.",
     ("Allí todo estaba cubierto de nieve, blanca y suave como el algodón.",
      "{hero} hizo bolas de nieve, dejó sus huellas por todas partes y se rio hasta que le dolió la barriga.")),
    ("ver las estrellas de cerca", "la cima de la montaña más alta", "Pero la montaña más alta estaba muy lejos, y el camino era largo y difícil.",
     ("Cuando llegó la noche, el cielo se llenó de estrellas.",
      "Estaban tan cerca que parecía que se podían tocar, y {hero} se quedó mirándolas hasta quedarse [hero:dormido|dormida].")),
    ("encontrar el final del arcoíris", "el final del arcoíris", "Pero el arcoíris siempre parecía estar detrás de la siguiente colina.",
     ("Allí no había ningún tesoro, sino un valle lleno de flores de todos los colores.",
      "{hero} sonrió, porque comprendió que el verdadero tesoro era todo lo que había vivido por el camino.")),
    ("ver la gran cascada", "la gran cascada", "Pero la gran cascada estaba muy lejos, escondida entre las montañas.",
     ("El agua caía desde tan alto que formaba una nube de gotitas donde brillaba un pequeño arcoíris.",
      "{hero} se sentó en una roca y estuvo mirándola durante horas, sin cansarse.")),
    ("conocer la gran ciudad", "la gran ciudad", "Pero la gran ciudad estaba a muchos días de camino.",
     ("Había calles llenas de gente, tiendas de mil colores y una torre con un reloj enorme que daba las horas con campanadas.",
      "{hero} lo miraba todo con la boca abierta, y pensó que nunca olvidaría aquel día.")),
    ("ver los campos de girasoles", "la llanura de los girasoles", "Pero la llanura de los girasoles estaba muy lejos, al otro lado de las montañas.",
     ("Miles de girasoles, altos y dorados, giraban despacio para mirar al sol.",
      "{hero} se tumbó entre ellos y se quedó escuchando el zumbido de las abejas hasta que se hizo de noche.")),
    ("conocer el bosque de los árboles gigantes", "el bosque de los árboles gigantes",
     "Pero aquel bosque estaba muy lejos, y solo los pájaros sabían el camino.",
     ("Los árboles eran tan altos que sus copas se perdían entre las nubes.",
      "{hero} abrazó uno de los troncos, tan grueso que ni diez amigos juntos habrían podido rodearlo.")),
)

# The lost treasure: noun, its description (adjectives or a fixed phrase), who can take it.
TREASURES = tuple((register_noun(sg, g), desc, frozenset(tags.split("/"))) for sg, g, desc, tags in (
    ("flauta", "f", ("de madera",), "toy"), ("pañuelo", "m", tuple(COLOURS.values()), "soft/light"),
    ("sombrero", "m", ("de paja", COLOURS["verde"], COLOURS["amarillo"]), "light/toy"),
    ("muñeca", "f", ("de trapo",), "soft/toy"), ("pelota", "f", (COLOURS["rojo"], COLOURS["azul"], "de colores"), "toy"),
    ("cometa", "f", ("de colores", COLOURS["rojo"], COLOURS["amarillo"]), "light"),
    ("bufanda", "f", ("de lana", COLOURS["rojo"], COLOURS["verde"], COLOURS["azul"]), "soft"),
    ("collar", "m", ("de conchas",), "shiny"), ("campanita", "f", ("de plata",), "shiny"),
    ("gorro", "m", ("de lana", COLOURS["rojo"], COLOURS["azul"]), "soft/light/toy"),
    ("llave", "f", (register_adjective("dorado"),), "shiny"), ("anillo", "m", ("de plata",), "shiny"),
    ("canica", "f", ("de cristal",), "shiny/toy"), ("silbato", "m", ("de plata",), "shiny/toy"),
    ("lazo", "m", (COLOURS["rojo"], COLOURS["azul"], COLOURS["amarillo"]), "light"),
    ("peonza", "f", ("de madera",), "toy"), ("cascabel", "m", ("de plata",), "shiny/toy"),
    ("globo", "m", (COLOURS["rojo"], COLOURS["azul"], COLOURS["amarillo"]), "light"),
    ("molinillo", "m", ("de papel",), "light/toy"), ("caracola", "f", (register_adjective("rosado"),), "shiny"),
    ("cesta", "f", ("de mimbre",), "soft"), ("gorra", "f", (COLOURS["azul"], COLOURS["verde"]), "soft/light"),
))

# Neighbours asked about the lost treasure: noun, species, what they were doing when found.
WITNESSES = tuple((register_noun(sg, g), sp, doing) for sg, g, sp, doing in (
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
REFERRALS = ("que siempre sabe todo lo que pasa por aquí", "que pasa el día mirando el camino",
             "que tiene muy buena vista", "que conoce cada rincón de este lugar")

# Who took it: the clue a neighbour gives, the tags of what it takes, its species.
CULPRITS = {
    "urraca": ("a una urraca que [treasure:lo|la] llevaba en el pico hacia el viejo pino", "shiny", "urraca"),
    "ratones": ("a unos ratoncitos que [treasure:lo|la] arrastraban hacia su agujero", "soft", "ratón"),
    "cachorro": ("a un cachorro que corría hacia el río con [treasure:él|ella] en la boca", "toy", "perro"),
    "viento": ("cómo una ráfaga de viento [treasure:lo|la] arrastraba hacia el bosque", "light", "viento"),
    "cabra": ("a una cabra que [treasure:lo|la] mordisqueaba detrás del establo", "soft", "cabra"),
}
register_nouns("cachorro m")

# Newcomers nobody wanted to play with: kinds, intro adjective, why, the day they saved.
NEWCOMERS = tuple(
    (tuple(register_noun(*k.split()) for k in kinds), sp, register_adjective(adj), groups, why, rescue)
    for kinds, sp, adj, groups, why, rescue in (
        (("oso m", "osa f"), "oso", "enorme", ("animal", "fantasy"),
         ("Era tan grande y tan fuerte que todos se apartaban al [newcomer:verlo|verla] pasar.",
          "Era tan grande que los demás se escondían en cuanto [newcomer:lo|la] veían llegar."),
         ("<Una tarde de viento|Una noche de tormenta>, un árbol enorme cayó sobre el puente del arroyo, y nadie podía volver a casa. Todos empujaron el tronco, pero no se movía ni un poco.",
          "Entonces llegó {newcomer}, <levantó el tronco como si fuera una pluma|apartó el tronco de un solo empujón> y lo dejó a un lado del camino.")),
        (("jirafa f",), "jirafa", "alto", ("animal",),
         ("Tenía el cuello tan largo que los demás se reían de ella a escondidas.",
          "Era tan alta que los demás decían que parecía un árbol con patas."),
         ("<Un día|Una mañana de primavera>, un pajarito se cayó de su nido, que estaba en lo alto de un árbol altísimo, y nadie podía llegar hasta allí para devolverlo.",
          "Entonces {newcomer} estiró su largo cuello y <dejó al pajarito en su nido con mucho cuidado|devolvió al pajarito a su nido, junto a sus hermanos>.")),
        (("dragón m",), "dragón", "pequeño", ("animal", "person", "fantasy"),
         ("Cuando estornudaba, le salían chispas por la nariz, y todos tenían miedo de quemarse.",
          "Echaba humo por la nariz cuando se reía, y a todos les daba miedo."),
         ("<Aquel invierno|Una noche de enero> llegó una helada terrible. La leña estaba mojada y nadie conseguía encender el fuego.",
          "Entonces {newcomer} respiró hondo, sopló con cuidado y encendió una hoguera enorme. Todos se sentaron a su alrededor, <calentitos y contentos|cantando y riendo>.")),
        (("erizo m",), "erizo", "pequeño", ("animal",),
         ("Tenía el lomo cubierto de púas, y nadie quería acercarse a él por miedo a pincharse.",
          "Como tenía púas por todo el cuerpo, nadie quería jugar con él."),
         ("Un día de otoño, todos querían recoger las manzanas del árbol más alto del prado, pero las manzanas caían y rodaban cuesta abajo hasta perderse entre la hierba.",
          "Entonces {newcomer} se hizo una bola, rodó por la cuesta y volvió con un montón de manzanas clavadas en sus púas.")),
        (("lobo m", "loba f"), "lobo", "joven", ("animal",),
         ("Todos decían que los lobos eran malos, así que nadie quería jugar con [newcomer:él|ella].",
          "Tenía los dientes tan grandes que todos huían al [newcomer:verlo|verla], aunque nunca había hecho daño a nadie."),
         ("<Una tarde|Un día de niebla>, la hermanita pequeña de {hero} se perdió en el bosque y, cuando se hizo de noche, todos estaban muy preocupados.",
          "{newcomer} olfateó el suelo, siguió su rastro entre los árboles y, al poco rato, volvió con ella sana y salva.")),
        (("murciélago m",), "murciélago", "pequeño", ("animal", "fantasy"),
         ("Dormía boca abajo durante el día y volaba de noche, y a todos les parecía muy raro.",
          "Como dormía de día y volaba de noche, los demás decían que era un bicho raro."),
         ("Una noche sin luna, {hero} y sus amigos volvían de una fiesta y se perdieron en el bosque.",
          "{newcomer}, que sabía orientarse en la oscuridad, voló delante de ellos y los guio hasta casa.")),
        (("topo m",), "topo", "pequeño", ("animal",),
         ("Veía tan poco que siempre se chocaba con todo, y los demás se reían de él.",
          "Como casi no veía, caminaba a tientas, y los demás se burlaban de él."),
         ("<Aquel verano|Un verano muy seco>, el huerto se quedó sin agua, y las lechugas y los tomates empezaron a secarse.",
          "Entonces {newcomer} cavó un canal desde el arroyo hasta el huerto, y el agua llegó a todas las plantas.")),
        (("gigante m",), "gigante", "enorme", ("person", "fantasy"),
         ("Era tan grande que, cuando caminaba, hacía temblar el suelo, y todos salían corriendo.",
          "Era tan alto como una torre, y los vecinos cerraban las ventanas cuando lo veían pasar."),
         ("<Un día de lluvia|Una tarde de otoño>, el carro con todas las manzanas de la cosecha se quedó atascado en el barro, y ni diez caballos habrían podido sacarlo.",
          "{newcomer} lo levantó con una sola mano y lo dejó en el camino, sin que se cayera ni una manzana.")),
    )
)

# Friends who come to push a rock: (definite noun phrase, species) by group.
_ANIMAL_CREW = (("el oso", "oso"), ("la cabra", "cabra"), ("el burro", "burro"), ("la vaca", "vaca"),
                ("el caballo", "caballo"), ("el jabalí", "jabalí"), ("el ciervo", "ciervo"))
CREW = {
    "animal": _ANIMAL_CREW,
    "person": (("el herrero", "herrero"), ("la panadera", "panadero"), ("el molinero", "molinero"),
               ("la pastora", "pastor"), ("el leñador", "leñador"), ("la costurera", "costurera")),
    "fantasy": _ANIMAL_CREW,
}
register_nouns("vaca f, caballo m, jabalí m jabalíes, paloma f, lagartija f")

# The lesson each plot (or, for the lost treasure, each culprit) ends on.
MORALS = {
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
    "bees": ("hasta [hero:el más pequeño|la más pequeña] puede hacer cosas muy grandes",
             "cuidar de la naturaleza es cuidar de todos"),
}
