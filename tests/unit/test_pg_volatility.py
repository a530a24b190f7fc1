"""Volatility loading (postgres/volatility.py): the lookup the classifier gets from pg_proc."""

from __future__ import annotations

from dbbalancer.postgres.classify import Classifier
from dbbalancer.postgres.volatility import build_lookup


def test_the_worst_volatility_over_overloads_and_schemas_wins() -> None:
    table = build_lookup(
        [
            ("pg_catalog", "f", "i"),
            ("app", "f", "v"),  # an app function of the same name may write
            ("app", "g", "s"),
            ("app", "g", "i"),
        ]
    )
    assert table["f"] == "v"  # unqualified: any schema on the search_path may be the one
    assert table["pg_catalog.f"] == "i"
    assert table["app.f"] == "v"
    assert table["g"] == "s"
    assert "h" not in table


def test_the_classifier_follows_the_loaded_lookup() -> None:
    classifier = Classifier()
    classifier.set_volatility(build_lookup([("app", "reader", "s"), ("app", "writer", "v")]).get)
    assert classifier.classify("SELECT reader()").read_only
    assert not classifier.classify("SELECT writer()").read_only
    assert not classifier.classify("SELECT app.writer()").read_only
    # A reload that marks the function volatile changes the answer (the cache is dropped).
    classifier.set_volatility(build_lookup([("app", "reader", "v")]).get)
    assert not classifier.classify("SELECT reader()").read_only
