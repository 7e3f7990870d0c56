from pathlib import Path

from contract.settings import FleetSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_lists_every_setting() -> None:
    text = README.read_text()
    missing = [name for name in FleetSettings.model_fields if f"`EMBED_{name.upper()}`" not in text]
    assert not missing, f"README lacks: {missing}"
