"""segmenta.clv, segment(clv=True, holdout_share=...) and segmenta.uplift
against a real server, checked against the CLI on the same log."""
import datetime
import json
import random
import subprocess

import pandas as pd
import pytest

import segmenta
from conftest import _binary


def shop(n_customers=1500, seed=11):
    """Two years from 2024-01-01, as the value models assume: customers
    start in the first year, buy at their own rate and leave after a
    purchase with their own probability; amounts around their own mean."""
    rng = random.Random(seed)
    start = datetime.date(2024, 1, 1)
    rows = []
    for c in range(n_customers):
        first = rng.randrange(365)
        rate = 0.005 + 0.05 * rng.random()
        leave = 0.02 + 0.3 * rng.random()
        mean = 20.0 + 80.0 * rng.random()
        day = float(first)
        while int(day) <= 730:
            rows.append((f"C{c:05d}", (start + datetime.timedelta(days=int(day))).isoformat(),
                         round(mean * (0.5 + rng.random()), 2)))
            if int(day) > first and rng.random() < leave:
                break
            day += rng.expovariate(rate)
    return pd.DataFrame(rows, columns=["customer_id", "date", "amount"])


def test_clv_matches_the_cli_and_writes_its_report(client, tmp_path):
    frame = shop()
    path = tmp_path / "log.csv"
    frame.to_csv(path, index=False)
    result = segmenta.clv(path, client=client, calibration_end="2025-03-31",
                          holdout_end="2025-12-31", horizon=26, discount_rate=0.001,
                          artifacts=["clv.html", "holdout.png"], artifacts_dir=tmp_path / "out")
    run = result.run
    cli = json.loads(subprocess.run(
        [_binary(), "clv", "--transactions", str(path), "--calibration-end", "2025-03-31",
         "--holdout-end", "2025-12-31", "--horizon", "26", "--discount-rate", "0.001", "--json"],
        check=True, capture_output=True, text=True, timeout=300).stdout)
    # The same file, the same deterministic fit: the same numbers.
    for name in ("r", "alpha", "a", "b"):
        assert getattr(run.bgnbd, name) == pytest.approx(cli["bgnbd"][name], rel=1e-12), name
    for name in ("p", "q", "v"):
        assert getattr(run.gamma_gamma, name) == pytest.approx(cli["gamma_gamma"][name], rel=1e-12)
    assert run.n_customers == cli["n_customers"] == frame["customer_id"].nunique()
    assert run.total_clv == pytest.approx(cli["total_clv"], rel=1e-12)
    assert run.bgnbd.fit.converged and run.gamma_gamma.fit.converged
    # The frames: one row per customer, seven parameters, eight buckets.
    assert list(result.customers.columns) == [
        "customer_id", "x", "t_x", "T", "p_alive", "expected_purchases", "expected_spend", "clv",
        "value_tier", "churn_risk"]
    assert len(result.customers) == run.n_customers
    assert result.customers["p_alive"].between(0, 1).all()
    assert result.customers["clv"].sum() == pytest.approx(run.total_clv, rel=1e-9)
    assert list(result.parameters["parameter"]) == ["r", "alpha", "a", "b", "p", "q", "v"]
    assert (result.parameters["std_error"] > 0).all()
    assert list(result.holdout["repeat_purchases"]) == ["0", "1", "2", "3", "4", "5", "6", "7+"]
    assert result.holdout["customers"].sum() == run.n_customers
    assert run.holdout.total_actual == cli["holdout"]["total_actual"]
    assert b"Holdout check" in result.artifacts["clv.html"]
    assert (tmp_path / "out" / "holdout.png").read_bytes()[:4] == b"\x89PNG"
    assert result.id in result.delete()


def test_segments_with_value_and_a_campaign_measured(client, tmp_path):
    frame = shop(1200, seed=12)
    seg = segmenta.segment(frame, client=client, k=3, clv=True, horizon=26,
                           holdout_share=0.25, experiment_salt="spring")
    assert {"mean_clv", "total_clv", "value_share", "mean_p_alive", "control"} <= set(seg.segments.columns)
    assert seg.segments["value_share"].sum() == pytest.approx(1.0)
    for _, s in seg.segments.iterrows():
        assert s["control"] == round(0.25 * s["size"])
    customers = seg.customers
    assert {"clv", "p_alive", "churn_risk", "group"} <= set(customers.columns)
    assert set(customers["group"]) == {"treatment", "control"}

    # A campaign that lifts conversion from about 10 % to about 30 %.
    rng = random.Random(5)
    treated = customers["group"] == "treatment"
    converted = [rng.random() < (0.3 if t else 0.1) for t in treated]
    outcomes = pd.DataFrame({"customer_id": customers["customer_id"], "converted": converted,
                             "revenue": [25.0 if c else 0.0 for c in converted]})
    up = segmenta.uplift(seg, outcomes, client=client)
    table = up.table
    assert list(table["segment"])[-1] == "all"
    overall = table.iloc[-1]
    assert overall["treated"] + overall["control"] == len(customers)
    assert overall["uplift_low"] > 0.1 and overall["uplift_high"] < 0.3, overall
    assert overall["p_value"] < 1e-6
    assert overall["revenue_uplift"] == pytest.approx(25.0 * overall["uplift"])
    assert len(table) == len(seg.segments) + 1
    # The rows sent in many small blocks give the same answer as in one.
    again = client.uplift(seg.id, outcomes["customer_id"], outcomes["converted"],
                          outcomes["revenue"], block_bytes=2000)
    assert again.overall.conversion.estimate == overall["uplift"]
    assert again.overall.revenue_p_value == overall["revenue_p_value"]

    # Errors name the problem, before anything is sent where they can.
    with pytest.raises(ValueError, match="no column"):
        segmenta.uplift(seg, outcomes.drop(columns=["converted"]), client=client)
    with pytest.raises(ValueError, match="one of each per customer"):
        client.uplift(seg.id, ["a", "b"], [True])
    with pytest.raises(ValueError, match="converted, row 2"):
        client.uplift(seg.id, ["a", "b"], [1, float("nan")])
    with pytest.raises(ValueError, match="converted, row 1"):
        client.uplift(seg.id, ["a"], ["no"])
    # A file's path works as the DataFrame does; anything else is refused.
    path = tmp_path / "outcomes.csv"
    outcomes.to_csv(path, index=False)
    assert segmenta.uplift(seg, path, client=client).table.iloc[-1]["uplift"] == overall["uplift"]
    assert segmenta.uplift(seg, str(path), client=client).table.iloc[-1]["p_value"] == overall["p_value"]
    with pytest.raises(TypeError, match="DataFrame or the path"):
        segmenta.uplift(seg, outcomes.to_dict("list"), client=client)
    with pytest.raises(ValueError, match="expected a .csv, .tsv or .parquet"):
        segmenta.uplift(seg, tmp_path / "outcomes.xlsx", client=client)
    dollars = outcomes.assign(revenue=["$%.2f" % r for r in outcomes["revenue"]])
    with pytest.raises(ValueError, match="column 'revenue', row 1: '\\$"):
        segmenta.uplift(seg, dollars, client=client)
    # A European spreadsheet's file: semicolons, decimal commas.
    eu = tmp_path / "eu.csv"
    outcomes.to_csv(eu, index=False, sep=";", decimal=",")
    with pytest.raises(ValueError, match="pass decimal_comma=True"):
        segmenta.uplift(seg, eu, client=client)
    assert (segmenta.uplift(seg, eu, client=client, decimal_comma=True).table.iloc[-1]["revenue_uplift"]
            == pytest.approx(overall["revenue_uplift"]))
    # No revenue sent: its figures are not measured (NaN), not "no effect".
    none = segmenta.uplift(seg, outcomes.drop(columns=["revenue"]), client=client, revenue=None)
    assert none.table["revenue_uplift"].isna().all() and none.table["revenue_p_value"].isna().all()
    assert none.table.iloc[-1]["uplift"] == overall["uplift"]
    # Empty revenue cells are no revenue, as in the CLI.
    gaps = outcomes.assign(revenue=outcomes["revenue"].where(outcomes["converted"]))
    assert segmenta.uplift(seg, gaps, client=client).table.iloc[-1]["uplift"] == overall["uplift"]
    twice = pd.concat([outcomes.head(2), outcomes.head(1)])
    with pytest.raises(segmenta.InvalidArgument, match="same customer id"):
        segmenta.uplift(seg, twice, client=client)
    plain = segmenta.segment(frame, client=client, k=3)
    with pytest.raises(segmenta.FailedPrecondition, match="no campaign groups"):
        segmenta.uplift(plain, outcomes, client=client)
    plain.delete()
    seg.delete()


def test_clv_errors_name_the_problem(client):
    frame = shop(300, seed=13)
    with pytest.raises(ValueError, match="time unit"):
        client.start_clv(transactions_id="tx-x", calibration_end="2025-03-31", time_unit="fortnight")
    with pytest.raises(segmenta.InvalidArgument, match="calibration_end"):
        client.start_clv(transactions_id="tx-x", calibration_end="31/03/2025")
    with pytest.raises(segmenta.NotFound, match="tx-nope"):
        client.start_clv(transactions_id="tx-nope", calibration_end="2025-03-31")
    with pytest.raises(ValueError, match="experiment_salt needs holdout_share"):
        client.start_segment(transactions_id="tx-x", experiment_salt="s")
    # 0 cannot cross the wire as a share (it reads as "no experiment").
    for share in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            client.start_segment(transactions_id="tx-x", holdout_share=share)
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            segmenta.segment(frame, client=client, holdout_share=share)
    # What only the log can tell fails the job; the upload does not stay.
    uploaded = []
    upload = client.upload_transactions

    def recording(*args, **kwargs):
        log = upload(*args, **kwargs)
        uploaded.append(log.id)
        return log

    client.upload_transactions = recording
    try:
        with pytest.raises(ValueError, match="order is not used by clv"):
            segmenta.clv(frame, client=client, calibration_end="2025-03-31", order="order_id")
        with pytest.raises(segmenta.JobFailed, match="calibration end"):
            segmenta.clv(frame, client=client, calibration_end="2030-01-01")
    finally:
        del client.upload_transactions
    assert len(uploaded) == 1
    with pytest.raises(segmenta.NotFound):
        client.delete_transactions(uploaded[0])
