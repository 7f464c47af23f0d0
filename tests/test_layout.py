"""The layout the redesigns keep: each family in one module that registers a record, the shared code
family-blind, so that a new family is one module plus one YAML config (issue 17); the library in layered
packages under modules/ that import only the layers below them, with no import circle, the top-level files and
scripts/ and benchmarks/ as front ends over it, small folders and a short README (issue 31, docs/architecture.md)."""
import ast
import dataclasses
import os
import re

import pytest
import torch
import yaml
from torch import nn

import modules.config.family as family_module
from modules.config.family import Family, register, registered
from modules.config.loading import config_from_dict
from modules.config.sections import Config, GeneratorTrainParams

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPARES_A_FAMILY = re.compile(r"family\s*(==|!=|in\s*[(\[{])")


def project_python_files():
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in ("tests", "log", "data", "build")]
        for name in files:
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(folder, name), REPO)


def test_only_family_code_compares_a_family():
    offenders = []
    for path in project_python_files():
        if path.startswith(os.path.join("modules", "families")) or path == os.path.join("modules", "family.py"):
            continue
        with open(os.path.join(REPO, path), encoding="utf-8") as stream:
            for number, line in enumerate(stream, 1):
                if COMPARES_A_FAMILY.search(line.split("#")[0]):
                    offenders.append(f"{path}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


LONG_FILES_ALLOWED = {os.path.join("modules", "data", "synthetic.py"), os.path.join("modules", "data", "video_io.py")}


def test_no_file_over_400_lines_and_no_function_over_60():
    """Short enough to read at once: files of at most 400 lines (the renderer and the video layer aside),
    functions of at most 60, scripts and benchmarks included."""
    long_files, long_functions = [], []
    for path in project_python_files():
        with open(os.path.join(REPO, path), encoding="utf-8") as stream:
            text = stream.read()
        lines = text.count("\n")
        if lines > 400 and path not in LONG_FILES_ALLOWED:
            long_files.append(f"{path}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long_functions.append(f"{path}:{node.lineno}: {node.name} {length} lines")
    assert not long_files and not long_functions, "\n".join(long_files + long_functions)


def test_every_registered_family_names_itself_and_its_networks():
    families = registered()
    assert list(families)[0] == "keypoint_mask"          # the paper's model: the default, listed first
    assert set(families) == {"keypoint_mask", "fomm", "perturbed", "detector"}
    for name, record in families.items():
        fields = {f.name: f for f in dataclasses.fields(record.model_params)}
        assert fields["family"].default == name
        assert record.networks and len(set(record.networks)) == len(record.networks)
        assert dataclasses.is_dataclass(record.train_params)


class ToyModel(nn.Module):
    """A fifth family's whole model: the prediction is the source, brightened by one learned number."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))


def test_a_fifth_family_is_one_registered_record_and_one_config(tmp_path, monkeypatch):
    monkeypatch.setattr(family_module, "_REGISTRY", dict(family_module._REGISTRY))

    @dataclasses.dataclass
    class Common:
        num_channels: int = 3
        scale_factor: float = 1.0

    @dataclasses.dataclass
    class Params:
        common_params: Common = dataclasses.field(default_factory=Common)
        family: str = "toy"

    def load(config, checkpoint, source):
        model = ToyModel()
        model.load_state_dict(checkpoint["generator"])
        return model

    register(Family(name="toy", model_params=Params, train_params=GeneratorTrainParams,
                    build=lambda config, checkpoint_with_kp=None: ToyModel(), load=load,
                    trainable=lambda config, model, perceptual: None, networks=("generator",),
                    title=lambda params: "toy", reads_detector=False))
    data = yaml.safe_load("""
dataset_params: {root_dir: data, frame_shape: [64, 64, 3]}
model_params: {family: toy}
train_params: {num_epochs: 1, batch_size: 1, checkpoint_freq: 1, lr_generator: 1.0e-4, scales: [1],
               loss_weights: {perceptual: [1]}}
""")
    config = config_from_dict(data, "toy.yaml")
    assert isinstance(config, Config) and config.motion_name == "toy" and not config.relative_motion_possible
    assert config_from_dict(config.to_dict(), "saved").to_dict() == config.to_dict()
    from modules.families.build import build_model, model_from_checkpoint
    model = build_model(config)
    with torch.no_grad():
        model.gain.fill_(2.0)
    loaded = model_from_checkpoint(config, {"generator": model.state_dict()}, "toy.pth.tar")
    assert loaded.gain.item() == 2.0
    with pytest.raises(Exception, match="model_params.family: expected one of 'keypoint_mask'.*'toy'"):
        config_from_dict({**data, "model_params": {"family": "toyy"}}, "toy.yaml")


def test_setup_installs_every_package_of_the_project():
    with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as stream:
        listed = set(re.findall(r'"([\w.]+)"', re.search(r"packages=\[([^\]]*)\]", stream.read()).group(1)))
    found = {os.path.relpath(folder, REPO).replace(os.sep, ".")
             for folder, _, files in os.walk(os.path.join(REPO, "modules")) if "__init__.py" in files}
    assert found <= listed, f"setup.py packages miss {sorted(found - listed)}"


# ----------------------------------------------------------------------------------------------------------
# Layers (docs/architecture.md)

LAYERS = ("core", "nets", "config", "data", "training", "families", "evaluation", "inference", "app")
FRONT_ENDS = ("run", "train", "animate", "reconstruction", "frames_dataset", "logger", "scripts", "benchmarks")
# The one import allowed to go up: the registry imports the families package so that they register themselves.
REGISTRY_EDGE = ("modules.config.family", "modules.families")


def module_name(path: str) -> str:
    name = path[:-3].replace(os.sep, ".")
    return name.removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports, anywhere in the file (inside functions and under
    TYPE_CHECKING too); ``from a.b import c`` counts as importing a.b.c when that is a module, else a.b."""
    modules = {module_name(path): path for path in project_python_files()}

    def resolve(name: str):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        with open(os.path.join(REPO, path), encoding="utf-8") as stream:
            tree = ast.parse(stream.read())
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets |= {resolve(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets |= {resolve(f"{base}.{alias.name}") or resolve(base) for alias in node.names}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1
        stack.append(root); on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]; counter[0] += 1
                    stack.append(child); on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop(); on_stack.discard(member); component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer_of(name: str):
    parts = name.split(".")
    return LAYERS.index(parts[1]) if parts[0] == "modules" and len(parts) >= 2 and parts[1] in LAYERS else None


def test_the_graph_reader_sees_imports_inside_functions_and_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    assert "modules.core.device" in graph["run"]                 # imported inside run.py's functions
    assert "modules.inference.pipeline" in graph["modules.app.page"]


def test_no_import_circle_but_the_family_registry():
    graph = import_graph()
    graph[REGISTRY_EDGE[0]].discard(REGISTRY_EDGE[1])
    assert circles(graph) == []


def test_each_layer_imports_only_the_layers_below_it_and_no_front_end():
    graph = import_graph()
    problems = []
    for name, targets in sorted(graph.items()):
        if not name.startswith("modules."):
            continue
        mine = layer_of(name)
        assert mine is not None or name == "modules", f"{name}: not in a layer"
        for target in sorted(targets):
            if (name, target) == REGISTRY_EDGE or target == "modules":
                continue
            theirs = layer_of(target)
            if target.split(".")[0] in FRONT_ENDS:
                problems.append(f"{name} imports the front end {target}")
            elif theirs is None or (mine is not None and theirs > mine):
                problems.append(f"{name} ({LAYERS[mine] if mine is not None else '?'}) imports {target}, a layer above")
    assert not problems, "\n".join(problems)


def test_no_import_by_name_in_the_library():
    offenders = []
    for path in project_python_files():
        if path.startswith("modules"):
            with open(os.path.join(REPO, path), encoding="utf-8") as stream:
                text = stream.read()
            if re.search(r"import_module\(|__import__\(", text):
                offenders.append(path)
    assert not offenders


def test_no_folder_but_the_root_and_tests_holds_more_than_12_python_files():
    counts: dict[str, int] = {}
    for path in project_python_files():
        counts[os.path.dirname(path)] = counts.get(os.path.dirname(path), 0) + 1
    crowded = {folder: count for folder, count in counts.items() if folder and count > 12}
    assert not crowded, crowded


def test_the_readme_is_a_front_door_of_at_most_300_lines_and_its_links_resolve():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as stream:
        text = stream.read()
    assert text.count("\n") <= 300
    for target in re.findall(r"\]\(((?:docs|config|models|examples)/[^)#\s]+)", text):
        assert os.path.exists(os.path.join(REPO, target)), target


def test_the_front_ends_keep_fomms_names():
    import frames_dataset
    from modules.data.dataset import FramesDataset
    assert frames_dataset.FramesDataset is FramesDataset
