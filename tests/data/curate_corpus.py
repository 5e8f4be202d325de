"""Real text for the curation tests, without downloads: docstrings of the Python standard library
(English technical prose written by people), plus a few hand-written paragraphs in other languages."""

from __future__ import annotations

import importlib
import inspect

MODULES = ("collections", "json", "argparse", "logging", "subprocess", "threading", "email.message", "http.client",
           "unittest", "typing", "pathlib", "asyncio", "sqlite3", "csv", "random", "decimal", "fractions",
           "statistics", "datetime", "calendar", "textwrap", "difflib", "shutil", "tarfile", "zipfile", "socket",
           "ssl", "inspect", "functools", "itertools", "configparser", "optparse", "pickle", "tempfile",
           "urllib.request")


def stdlib_docs(min_words: int = 80, limit: int | None = None) -> list[str]:
    seen: set[str] = set()
    docs: list[str] = []
    for name in MODULES:
        mod = importlib.import_module(name)
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj)
            if doc and len(doc.split()) >= min_words and doc not in seen:
                seen.add(doc)
                docs.append(doc)
    return docs[:limit] if limit else docs


GERMAN = ("Die Stadtverwaltung hat am Montag angekündigt, dass die Bauarbeiten an der Brücke über den Fluss "
          "bis zum Ende des Jahres abgeschlossen sein sollen. Während dieser Zeit wird der Verkehr über eine "
          "Umleitung durch die Innenstadt geführt, was zu längeren Fahrzeiten führen kann. Die Anwohner wurden "
          "gebeten, nach Möglichkeit öffentliche Verkehrsmittel zu nutzen oder auf das Fahrrad umzusteigen.")
FRENCH = ("Le musée présente cette année une exposition consacrée aux peintres impressionnistes et à leur "
          "influence sur l'art moderne. Les visiteurs pourront découvrir plus de cent œuvres prêtées par des "
          "collections privées du monde entier, dont certaines n'ont jamais été montrées au public. "
          "L'exposition sera ouverte tous les jours sauf le lundi, de dix heures à dix-huit heures.")
SPANISH = ("El ayuntamiento ha aprobado un nuevo plan para mejorar el transporte público en la ciudad durante "
           "los próximos cinco años. Entre las medidas previstas se encuentran la ampliación de la red de "
           "autobuses, la construcción de nuevos carriles para bicicletas y la renovación de varias estaciones "
           "de metro que llevan décadas sin modernizarse.")
ENGLISH = ("The city council announced on Monday that repairs to the bridge over the river should be finished by "
           "the end of the year. During the works, traffic will be diverted through the town centre, which may "
           "lengthen journeys at peak times. Residents have been asked to use public transport where they can, "
           "or to cycle, and the council has promised to publish weekly updates on its website.")
