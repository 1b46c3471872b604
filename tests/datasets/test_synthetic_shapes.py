from vlft.datasets.synthetic_shapes import CLASSES, make_scene, scene_caption


def test_caption_without_drawing_matches_the_drawn_scene():
    for seed in (0, 3):
        for i in range(100):
            scene = make_scene(i, seed, 32)
            assert scene["caption"] == scene_caption(i, seed)
            assert scene["caption"].startswith("a " + CLASSES[scene["label"]])
    assert make_scene(5, 0, 32)["image"].tobytes() == make_scene(5, 0, 32)["image"].tobytes()
