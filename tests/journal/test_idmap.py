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


def test_repoint_moves_a_mapping_to_a_new_twin_and_adds_missing_ones(tmp_path):
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'j.db'}")
    m = IdMap(engine, "acme", run_id="r1")
    m.put("activity", [("10", "501"), ("11", "502")])
    # the box lost 501 and a new twin 777 was written; 12 was never mapped; 11 is unchanged
    assert m.repoint("activity", [("10", "777"), ("11", "502"), ("12", "503")]) == 2
    assert IdMap(engine, "acme").get("activity") == {"10": "777", "11": "502", "12": "503"}
    assert m.repoint("activity", []) == 0 and m.count("activity") == 3
