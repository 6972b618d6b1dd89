"""`ulmr-bench methods --verbose`: every registered method's every config field, documented."""

from __future__ import annotations

from ulmr.cli import main
from ulmr.unlearning.config import describe_fields
from ulmr.unlearning.registry import available_methods


def test_every_config_field_of_every_method_carries_its_help():
    for name, method in available_methods().items():
        if name.startswith("test-"):  # methods the tests register
            continue
        for field in describe_fields(method.config_class):
            assert field["help"], f"{name} config field {field['name']!r} has no help (field metadata)"


def test_verbose_listing_prints_type_default_range_and_help(capsys):
    main(["methods", "--verbose", "npo"])
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("npo ")
    assert "    lr (float, default 1e-05 in (0, inf)): peak AdamW learning rate" in out
    assert "    beta (float, default 0.1 in (0, inf)): " in out
    assert "    dtype ('auto' | 'bf16' | 'fp32', default 'auto'): " in out
