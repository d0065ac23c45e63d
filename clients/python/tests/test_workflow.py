"""segmenta.segment: the customer workflow from a DataFrame or a path."""
import datetime
import random

import pandas as pd
import pytest

import segmenta


def log(n_customers=300, seed=3):
    """Frequent big spenders, occasional buyers and lapsed one-timers."""
    rng = random.Random(seed)
    end = datetime.date(2025, 12, 31)
    rows = []
    for i in range(n_customers):
        orders, gap, start, spend = [(20, 12, 5, 150.0), (4, 60, 20, 40.0), (2, 30, 400, 25.0)][i % 3]
        for j in range(orders):
            day = end - datetime.timedelta(days=start + j * gap + rng.randrange(3))
            rows.append((f"C{i:05d}", day.isoformat(), round(rng.uniform(0.8, 1.2) * spend, 2)))
    return pd.DataFrame(rows, columns=["client", "day", "total"])


def test_segment_a_dataframe_and_refresh_it(client, tmp_path):
    frame = log()
    result = segmenta.segment(frame, client=client, customer="client", date="day", amount="total",
                              k=3, artifacts=["report.html"], artifacts_dir=tmp_path)
    assert result.k == 3 and len(result.customers) == 300
    assert sorted(result.segments["size"]) == [100, 100, 100]
    assert {"segment", "description", "monetary_median"} <= set(result.segments.columns)
    assert result.customers["customer_id"].nunique() == 300
    # Customers of one planted group share a segment.
    by_group = result.customers.assign(group=result.customers["customer_id"].str[1:].astype(int) % 3)
    assert by_group.groupby("group")["segment"].nunique().max() == 1
    assert b"<h2>Segments</h2>" in result.artifacts["report.html"]
    assert (tmp_path / "report.html").read_bytes() == result.artifacts["report.html"]
    assert result.k_sweep.empty
    # Assign by the segmentation answers in its stable segment ids.
    features = result.customers[list(result.segmentation.features)]
    assigned = client.assign(result.id, features)
    assert (assigned.segments == result.customers["segment"].to_numpy()).all()
    # A refresh keeps the segment ids.
    again = segmenta.segment(frame, client=client, customer="client", date="day", amount="total",
                             previous=result.id)
    assert sorted(again.segments["segment"]) == sorted(result.segments["segment"])
    assert again.segmentation.refresh.stayed_fraction == pytest.approx(1.0)
    deleted = again.delete() + result.delete()
    assert result.id in deleted and again.id in deleted


def test_segment_a_csv_path_with_a_k_sweep(client, tmp_path):
    path = tmp_path / "export.csv"
    frame = log(240, seed=5).rename(columns={"client": "customer_id", "day": "date", "total": "amount"})
    frame.assign(date=pd.to_datetime(frame["date"]).dt.strftime("%d/%m/%Y"),
                 amount=frame["amount"].map(lambda a: f"{a:.2f}".replace(".", ","))).to_csv(
        path, sep=";", index=False)
    result = segmenta.segment(path, client=client, decimal_comma=True, k_range=(2, 4))
    assert list(result.k_sweep["k"]) == [2, 3, 4]
    assert result.k_sweep["recommended"].sum() == 1
    assert result.k in (2, 3, 4)
    assert result.segmentation.input.delimiter == ";"
    assert "%d/%m/%Y" in result.segmentation.input.date_format
    result.delete()


def test_segment_errors_name_the_problem(client):
    with pytest.raises(TypeError, match="DataFrame"):
        segmenta.segment(42, client=client)
    # The advice is in this package's arguments, not the command line's.
    with pytest.raises(segmenta.JobFailed, match="pass decimal_comma=True") as failed:
        segmenta.segment(b"customer_id,date,amount\nC1,2025-01-02,\"12,50\"\n", client=client, k=3)
    assert "--" not in str(failed.value), failed.value
    with pytest.raises(ValueError, match="unknown column role"):
        client.start_segment(transactions_id="x", columns={"shop": "s"})


def test_skipped_rows_are_warned_of_and_urls_are_addresses(server):
    frame = log(90, seed=7)
    text = frame.to_csv(index=False) + "C99999,not-a-date,5.0\n"
    # An http:// URL is a plaintext address, as on the command line.
    client = segmenta.Client(f"http://{server.address}", timeout=120)
    with pytest.warns(UserWarning, match=r"1 of \d+ rows skipped as unreadable \(1 bad date\)"):
        result = segmenta.segment(text.encode(), client=client, customer="client", date="day",
                                  amount="total", k=3)
    assert result.segmentation.input.bad_rows == 1
    result.delete()
