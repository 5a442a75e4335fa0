"""`cnncomp render` through the real entry point: every format, the graph after a pipeline, before and after side
by side, MAC shading, one block, and files that appear whole or not at all."""

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
BLOCK = ROOT / "tests" / "passes" / "resnet_block.py"
SVG = "{http://www.w3.org/2000/svg}"


def cnncomp(*args):
    return subprocess.run([sys.executable, "-m", "cnncomp", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def render(tmp_path, name, *args):
    target = tmp_path / name
    result = cnncomp("render", BLOCK, "-o", target, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(target)
    return target


def svg_texts(path):
    return [t.text for t in ET.parse(path).getroot().iter(f"{SVG}text") if t.text]


def svg_groups(path, kind):
    return [g for g in ET.parse(path).getroot().iter(f"{SVG}g") if g.get("class") == kind]


def test_svg_after_O3_shows_ops_attributes_shapes_and_what_was_fused(tmp_path):
    path = render(tmp_path, "block.svg", "-O", "3")
    texts = svg_texts(path)
    assert "pointwise_conv2d -> 512 +residual relu" in texts
    assert "conv2d 3x3 /2 pad 1 -> 128 relu" in texts
    assert "fused: conv3, bn3, add1" in texts and "fused: bn1, relu1" in texts
    assert "1x512x28x28 (residual)" in texts  # edges carry shapes; the residual operand says what it is
    assert "1x256x28x28" in texts
    assert len(svg_groups(path, "node")) == 6
    clusters = [g.find(f"{SVG}title").text for g in svg_groups(path, "cluster")]
    assert clusters == ["cluster_layer2", "cluster_layer2.0"]  # the block, nested
    assert not any("batch_norm" in text for text in texts)


def test_compare_draws_both_graphs_side_by_side(tmp_path):
    path = render(tmp_path, "compare.svg", "-O3", "--compare")
    texts = svg_texts(path)
    assert "resnet50_layer2.0 -O0: 12 ops, 372.5M MACs" in texts
    assert "resnet50_layer2.0 -O3: 5 ops, 372.5M MACs" in texts
    assert len(svg_groups(path, "node")) == 13 + 6
    assert sum(t == "batch_norm" for t in texts) == 4


def test_cost_shades_by_macs(tmp_path):
    path = render(tmp_path, "cost.svg", "-O3", "--cost")
    texts = svg_texts(path)
    assert "115.6M MACs" in texts  # conv2: 128 x 28 x 28 x 128 x 3 x 3
    fills = {g.find(f"{SVG}title").text: g.find(f"{SVG}path").get("fill") for g in svg_groups(path, "node")
             if g.find(f"{SVG}path") is not None}  # the boxes (the input is an ellipse)
    assert fills["layer2.0.conv2"] != fills["layer2.0.downsample_slice"] == "white"


def test_cost_has_a_legend_with_the_scale(tmp_path):
    texts = svg_texts(render(tmp_path, "cost.svg", "-O3", "--cost"))
    assert "fill: the node's MACs, linear up to the most in this graph" in texts
    scale = ["0 MACs", "28.9M MACs", "57.8M MACs", "86.7M MACs", "115.6M MACs"]  # white to the most (conv2)
    assert all(value in texts for value in scale)


DOT_ID = r'"?([^"\s]+)"?'  # quoted or not, as the graphviz package writes it


def dot_edges(source):
    """(tail, head, attributes) of every drawn edge of DOT source, as written by the graphviz package."""
    edges = re.findall(rf"^\s*{DOT_ID} -> {DOT_ID}(?: \[(.*)\])?$", source, re.MULTILINE)
    return [(tail, head, attributes) for tail, head, attributes in edges if "invis" not in attributes]


def test_skip_edges_are_dashed_before_and_after_fusion(tmp_path):
    edges = dot_edges(render(tmp_path, "compare.dot", "-O3", "--compare").read_text())
    skips = [(tail, head) for tail, head, attributes in edges if "style=dashed" in attributes]
    assert skips == [("before/layer2.0.downsample_bn", "before/layer2.0.add1"),  # -O0: the add's far operand
                     ("after/layer2.0.downsample", "after/layer2.0.relu3")]  # -O3: the fused conv's residual
    assert all(("(skip)" in attributes or "(residual)" in attributes) == ("style=dashed" in attributes)
               for _, _, attributes in edges)


def dot_rows(source):
    """The nodes of each `rank=same` group (drawn at one height), left to right."""
    rows = []
    for group in re.findall(r"\{\s*rank=same\s*(.*?)\}", source, re.DOTALL):
        pairs = re.findall(rf"{DOT_ID} -> {DOT_ID} \[style=invis\]", group)
        rows.append([pairs[0][0], *(head for _, head in pairs)])
    return rows


def svg_size(path):
    """Width and height in points of a picture graphviz wrote."""
    root = ET.parse(path).getroot()
    return tuple(float(root.get(side).removesuffix("pt")) for side in ("width", "height"))


def svg_centres(path):
    """Each node's centre (x, y), as the mean of its label lines' positions."""
    centres = {}
    for group in svg_groups(path, "node"):
        lines = list(group.iter(f"{SVG}text"))
        centres[group.find(f"{SVG}title").text] = (sum(float(t.get("x")) for t in lines) / len(lines),
                                                   sum(float(t.get("y")) for t in lines) / len(lines))
    return centres


@pytest.mark.parametrize("model", ["resnet50", "resnet152"])
def test_a_long_chain_is_folded_to_fit_a_screen(tmp_path, model):
    target = tmp_path / f"{model}.svg"
    result = cnncomp("render", model, "--cost", "-o", target)
    assert result.returncode == 0, result.stderr
    width, height = svg_size(target)
    assert 1 / 3 < height / width < 3  # unfolded, ResNet-50 was 496 x 15,505 points
    assert "layer3 (continued)" in svg_texts(target)  # a block split by the fold keeps its name in each column


def test_unet_is_drawn_as_a_u(tmp_path):
    source = tmp_path / "unet.dot"
    assert cnncomp("render", "unet", "-o", source).returncode == 0
    assert dot_rows(source.read_text()) == [  # each level: encoder's output and next step, decoder's up-conv, crop
        [f"down{level}.relu2", f"max_pool{level}", f"up{level}.upconv1", f"up{level}.crop1"] for level in (1, 2, 3, 4)]
    target = tmp_path / "unet.svg"
    result = cnncomp("render", "unet", "-o", target)
    assert result.returncode == 0, result.stderr
    centres = svg_centres(target)
    for level in (1, 2, 3, 4):  # each encoder level's output beside the decoder's crop of it, at one height
        (encoder_x, encoder_y), (decoder_x, decoder_y) = centres[f"down{level}.relu2"], centres[f"up{level}.crop1"]
        assert abs(encoder_y - decoder_y) < 1 and encoder_x < decoder_x
    assert centres["segmentation"][1] < centres["up2.crop1"][1]  # the decoder climbs
    width, height = svg_size(target)
    assert height < 4.5 * width  # the staircase it was: 701 x 4,913 points


def test_fcn_skips_join_beside_the_encoder(tmp_path):
    target = tmp_path / "fcn8s.dot"
    result = cnncomp("render", "fcn8s", "-o", target)
    assert result.returncode == 0, result.stderr
    assert dot_rows(target.read_text()) == [["score_pool3", "upscore_pool4", "fuse_pool3"],  # pool3's score, beside
                                            ["score_pool4", "upscore2", "fuse_pool4"]]  # the decoder's join


def test_one_block_and_the_other_formats(tmp_path):
    dot = render(tmp_path, "block.dot", "--block", "layer2.0").read_text()
    assert dot.startswith("digraph") and '"layer2.0.bn1"' in dot
    assert render(tmp_path, "block.png", "-O2").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert render(tmp_path, "block.pdf", "-O2").read_bytes()[:5] == b"%PDF-"


@pytest.mark.parametrize("args,message", [
    (["-o", "{tmp}/out.jpg"], "unknown picture format '.jpg'; expected one of .svg, .png, .pdf, .dot"),
    (["-o", "{tmp}/missing/out.svg"], "does not exist"),
    (["-o", "{tmp}/out.svg", "--block", "layer9"], "has no block 'layer9'; blocks: layer2, layer2.0"),
])
def test_errors_are_one_line_and_leave_no_file(tmp_path, args, message):
    result = cnncomp("render", BLOCK, *[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_failed_render_leaves_the_old_file_alone(tmp_path):
    target = tmp_path / "graph.svg"
    target.write_text("previous picture")
    result = cnncomp("render", BLOCK, "-o", target, "--block", "nowhere")
    assert result.returncode == 1
    assert target.read_text() == "previous picture" and list(tmp_path.iterdir()) == [target]
    render(tmp_path, "graph.svg")
    assert target.read_text().startswith("<?xml") and list(tmp_path.iterdir()) == [target]
    plain = tmp_path / "plain.txt"
    plain.write_text("")
    assert target.stat().st_mode == plain.stat().st_mode  # the mode of any new file, not a temporary's 0600


def test_output_is_required():
    result = cnncomp("render", BLOCK)
    assert result.returncode == 2 and "-o/--output" in result.stderr


# ----- the same module in-process: labels of every kind of node the test models have -------------------------
def test_labels_of_lowered_and_fused_nodes():
    from cnncomp import render
    from cnncomp.pipeline import optimize
    from tests.passes.models import mobile_blocks, unet_level, xception_blocks

    se, _ = optimize(mobile_blocks(se=True), 3)
    source = render.to_dot(se, cost=True).source
    assert "pointwise_conv2d -> 12 +gate +residual" in source and "(gate)" in source
    assert 'style=dotted' in source
    xception, _ = optimize(xception_blocks(), 3)
    text = render.graph_text(xception)
    assert "separable_conv2d(entry_block.sep1_pointwise) 3x3 pad 1 -> 16 : 2x16x16x16" in text
    assert "strided_slice(x) /2" in text
    mobile, _ = optimize(mobile_blocks(), 3)
    assert "separable_conv2d(block1.expand) 3x3 /2 pad 1 +mid bias mid relu6 -> 12" in render.graph_text(mobile)
    unet = unet_level()
    assert "(shape)" in render.to_dot(unet).source  # crop reads the up-conv only for its size
    assert "crop(down1.skip, up1.upconv) : 1x8x8x8" in render.graph_text(unet)
    assert "max_pool2d(down1.skip) 2x2 /2" in render.graph_text(unet)


README_COMMAND = ["render", "resnet50", "-O", "3", "--compare", "--block", "layer2.0", "-o"]


def test_the_readme_picture_is_what_its_command_draws(tmp_path):
    target = tmp_path / "resnet50_layer2.0.svg"
    result = cnncomp(*README_COMMAND, target)
    assert result.returncode == 0, result.stderr
    texts = svg_texts(target)
    assert "resnet50 -O3: 60 ops, 4.1G MACs; block layer2.0" in texts
    assert "fused: bn3, add1, relu3" in texts and "strided_slice /2" in texts
    # Labels, shapes and titles as committed (the layout may differ between graphviz versions).
    assert sorted(texts) == sorted(svg_texts(ROOT / "docs" / "resnet50_layer2.0.svg"))


def test_model_parameters_and_no_weights_needed_at_O0(tmp_path):
    target = tmp_path / "unet.dot"
    result = cnncomp("render", "unet", "--param", "width=8", "--param", "size=188", "-o", target)
    assert result.returncode == 0, result.stderr
    assert "1x8x184x184" in target.read_text()
