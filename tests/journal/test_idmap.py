import sqlalchemy

from journal.idmap import IdMap


def test_map_survives_runs_and_first_twin_wins(tmp_path):
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'j.db'}")
    m1 = IdMap(engine, "acme", run_id="r1")
    assert m1.put("lead", [("10", "501"), ("11", "502")]) == 2
    assert m1.put("lead", [("10", "999"), ("12", "503")]) == 1  # 10 is mapped already
    m2 = IdMap(engine, "acme", run_id="r2")  # a later run of the same migration
    assert m2.get("lead") == {"10": "501", "11": "502", "12": "503"}
    assert IdMap(engine, "other").get("lead") == {}
    assert m2.get("deal") == {}
    assert m2.count("lead") == 3
