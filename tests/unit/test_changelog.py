"""changelogs/changelog.yaml and CHANGELOG.rst say what the collection holds.

antsibull-changelog lists a module under the release of its DOCUMENTATION's ``version_added``; roles and playbooks
come from ``add object.*`` fragments. When a module, role, playbook or fragment is added (or removed) and the
changelog is not rebuilt with ``make changelog``, these tests name what is missing.
"""
import pathlib
import re

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHANGELOG = yaml.safe_load((REPO / "changelogs" / "changelog.yaml").read_text())
VERSION = yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]
REBUILD = "; run `make changelog` (antsibull-changelog release --update-existing --reload-plugins)"


def documentation(path):
    """A module's DOCUMENTATION as a dict (the string literal, read without importing the module)."""
    text = path.read_text()
    match = re.search(r'^DOCUMENTATION = r?(["\']{3})\n(.*?)\1', text, re.DOTALL | re.MULTILINE)
    assert match, "%s has no DOCUMENTATION" % path.name
    return yaml.safe_load(match.group(2))


def listed(kind):
    """{name: release} for the modules (``kind='modules'``) or objects (``'role'``, ``'playbook'``) of changelog.yaml."""
    names = {}
    for version, release in CHANGELOG["releases"].items():
        entries = release.get(kind, []) if kind == "modules" else release.get("objects", {}).get(kind, [])
        names.update((entry["name"], version) for entry in entries)
    return names


def test_galaxy_version_is_released():
    assert VERSION in CHANGELOG["releases"], "changelog.yaml has no %s release%s" % (VERSION, REBUILD)


def test_every_module_is_listed_under_its_version_added():
    expected = {}
    for path in sorted((REPO / "plugins" / "modules").glob("*.py")):
        doc = documentation(path)
        assert doc.get("version_added"), "%s: DOCUMENTATION has no version_added" % path.name
        expected[doc["module"]] = str(doc["version_added"])
    assert listed("modules") == expected, "changelog.yaml's modules differ from plugins/modules" + REBUILD


def test_every_role_and_playbook_is_listed():
    roles = {p.name for p in (REPO / "roles").iterdir() if (p / "tasks" / "main.yml").is_file()}
    playbooks = {p.stem for p in (REPO / "playbooks").glob("*.yml")}
    hint = ": add it to an `add object.role` / `add object.playbook` fragment in changelogs/fragments/" + REBUILD
    assert set(listed("role")) == roles, "changelog.yaml's roles differ from roles/" + hint
    assert set(listed("playbook")) == playbooks, "changelog.yaml's playbooks differ from playbooks/" + hint


def test_every_fragment_is_in_the_changelog():
    fragments = {p.name for p in (REPO / "changelogs" / "fragments").iterdir() if p.suffix in (".yml", ".yaml")}
    recorded = {name for release in CHANGELOG["releases"].values() for name in release.get("fragments", [])}
    assert fragments == recorded, "fragments and changelog.yaml differ" + REBUILD


def test_changelog_rst_is_generated_from_changelog_yaml():
    """CHANGELOG.rst names every module and the release summary that changelog.yaml has."""
    text = (REPO / "CHANGELOG.rst").read_text()
    release = CHANGELOG["releases"][VERSION]
    assert "v%s\n" % VERSION in text
    assert " ".join(release["changes"]["release_summary"].split()) in " ".join(text.split())
    for module in release.get("modules", []):
        assert "csa_inabox.managed_identity.%s - " % module["name"] in text, module["name"] + REBUILD
