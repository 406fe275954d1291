"""N@F parsing and the channel rule are pure functions."""

from __future__ import annotations

import pytest

from search.core.errors import NasdeployError
from search.space.scale import VARIANTS, cell_channels, parse_scale


def test_named_variants_follow_the_paper():
    assert (VARIANTS["cifar"].notation, VARIANTS["cifar"].image_size) == ("6@768", 32)
    assert (VARIANTS["mobile"].notation, VARIANTS["mobile"].image_size) == ("4@1056", 224)
    assert (VARIANTS["large"].notation, VARIANTS["large"].image_size) == ("6@4032", 331)


@pytest.mark.parametrize(
    "text, size, expected",
    [("4@64", None, (4, 64, 32, "cifar")), (" 2 @ 44 ", 16, (2, 44, 16, "cifar")),
     ("4@1056", 224, (4, 1056, 224, "imagenet")), ("Mobile", 160, (4, 1056, 160, "imagenet"))],
)
def test_parse(text, size, expected):
    scale = parse_scale(text, size)
    assert (scale.num_cells, scale.filters, scale.image_size, scale.layout) == expected


@pytest.mark.parametrize("text", ["huge", "4@", "@64", "4x64", "0@64", "4@0", "-1@48", ""])
def test_bad_scales_are_one_line_errors(text):
    with pytest.raises(NasdeployError) as info:
        parse_scale(text)
    assert "\n" not in str(info.value)


def test_channel_rule():
    assert cell_channels(768, 5) == 32 and cell_channels(1056, 5) == 44 and cell_channels(4032, 5) == 168
    assert cell_channels(64, 3) == 4 and cell_channels(48, 5) == 2 and cell_channels(192, 5) == 8


def test_too_narrow_f_is_refused_not_silently_widened():
    # 1@16 and 1@32 used to build the same 2-channel network as 1@48
    from search.core.errors import NasdeployError
    from search.space.scale import built_filters, min_filters, scale_summary

    assert min_filters(5) == 48 and min_filters(2) == 24
    for f in (8, 16, 32, 47):
        with pytest.raises(NasdeployError, match="at least 48") as info:
            cell_channels(f, 5)
        assert "\n" not in str(info.value)
    widths = {f: cell_channels(f, 5) for f in range(48, 400)}
    assert all(built_filters(f, 5) == 24 * c for f, c in widths.items())
    assert all(abs(built_filters(f, 5) - f) <= 12 for f in widths)  # the nearest buildable F
    assert "rounded to 192" in scale_summary(parse_scale("1@200", 16))
    assert "rounded" not in scale_summary(parse_scale("1@192", 16))
