"""The 13 ShapeNet categories of the 3D-R2N2 benchmark: synset id -> name (REFERENCE.md)."""

R2N2_CATEGORIES: dict[str, str] = {
    "02691156": "airplane",
    "02828884": "bench",
    "02933112": "cabinet",
    "02958343": "car",
    "03001627": "chair",
    "03211117": "display",
    "03636649": "lamp",
    "03691459": "speaker",
    "04090263": "rifle",
    "04256520": "sofa",
    "04379243": "table",
    "04401088": "telephone",
    "04530566": "watercraft",
}


def category_filter(categories) -> list[str] | None:
    """A source's ``categories`` option as strings (None = all).

    YAML reads an unquoted synset id made of the digits 0-7 with a leading zero as an octal integer
    (``[03001627]`` in a config file becomes ``[787351]``; ``02691156`` stays a string), so chair,
    display, sofa and watercraft would silently match nothing. An integer that is such an id read as
    octal is turned back into it; any other integer is refused with the advice to quote it.
    """
    if categories is None:
        return None
    if isinstance(categories, (str, int)):
        categories = [categories]
    out = []
    for c in categories:
        if isinstance(c, int) and not isinstance(c, bool):
            synset = f"{c:08o}"
            if synset not in R2N2_CATEGORIES:
                raise ValueError(
                    f"data.source.categories: {c} is a number, not a synset id or name; write "
                    "synset ids as strings (in a YAML file quote them: '03001627')"
                )
            c = synset
        out.append(str(c))
    return out
