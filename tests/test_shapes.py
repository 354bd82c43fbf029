from wizard.demo import shapes


def test_scenes_are_deterministic():
    a = shapes.scene_at(7, 3)
    b = shapes.scene_at(7, 3)
    assert a == b
    assert shapes.image_digest(a.render()) == shapes.image_digest(b.render())
    assert shapes.scene_at(7, 4) != a


def test_every_scene_has_one_yes_and_one_no_question():
    for i in range(200):
        sc = shapes.scene_at(1, i)
        assert sorted(a for _, a in sc.questions) == ["No", "Yes"]
        assert sc.category == shapes.CATEGORIES[i % 4]


def _truth(sc, question):
    """Independent reading of a question against the scene's items."""
    q = question.replace(shapes.SUFFIX, "")
    items = sc.items
    if sc.category == "existence":
        shape = q.split("Is there a ")[1].split(" in")[0]
        return any(i.shape == shape for i in items)
    if sc.category == "count":
        word = q.split()[2]
        return {v: k for k, v in shapes.NUMBER_WORDS.items()}[word] == len(items)
    if sc.category == "color":
        color = q.split("Is there a ")[1].split(" shape")[0]
        return any(i.color == color for i in items)
    side = q.split("on the ")[1].split(" side")[0]
    it = items[0]
    return {"left": it.col < 2, "right": it.col >= 2, "top": it.row < 2, "bottom": it.row >= 2}[side]


def test_answers_match_the_picture_content():
    for i in range(400):
        sc = shapes.scene_at(2, i)
        for q, a in sc.questions:
            assert _truth(sc, q) == (a == "Yes"), (sc, q, a)


def test_rendered_shapes_stay_inside_their_cells():
    sc = shapes.scene_at(1, 5, "count")
    img = sc.render()
    px = img.load()
    occupied = {(r, c) for r in range(4) for c in range(4)
                if any(max(px[c * 16 + x, r * 16 + y]) - min(px[c * 16 + x, r * 16 + y]) > 80
                       for x in range(16) for y in range(16))}
    assert occupied == {(i.row, i.col) for i in sc.items}
